"""What unit and integration tests share: async tests (`pytestmark = pytest.mark.anyio`) and async fixtures run
through anyio's pytest plugin, on asyncio."""

import pytest


@pytest.fixture
def anyio_backend():
    """The loop the platform runs on; anyio's plugin runs each async test and its async fixtures on one."""
    return "asyncio"
