"""Unit tests never start Ray: ray.init raises here, as in Ray Serve's own unit conftest.
Store tests run on both backends: SQLite, and a PostgreSQL server this session starts itself.
Async tests (`pytestmark = pytest.mark.anyio`) and async fixtures run on asyncio (tests/conftest.py)."""

import contextlib
import os

import pytest
import ray

from benchmarks import pg_server
from dcl_core import secret_files


@pytest.fixture(autouse=True)
def _no_ray(monkeypatch):
    def refuse(*args, **kwargs):
        raise RuntimeError("unit tests must not start Ray; put this test under tests/integration")

    monkeypatch.setattr(ray, "init", refuse)


@pytest.fixture(autouse=True)
def _secret_key(monkeypatch):
    """The operator's key that seals secrets in a PostgreSQL database (actors.db.secret_box), as a platform node
    has it."""
    monkeypatch.setenv(secret_files.SECRET_KEY_ENV, secret_files.new_secret_key())
    monkeypatch.delenv(secret_files.SECRET_KEY_FILE_ENV, raising=False)


@pytest.fixture
async def closing():
    """What a test opens and must close, pass or fail: `closing.push_async_callback(db.close)` right after
    opening it; closed after the test, on the test's loop."""
    async with contextlib.AsyncExitStack() as stack:
        yield stack


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture(scope="session")
def postgres_server():
    """One real PostgreSQL server for the session (initdb + pg_ctl), stopped at its end, whatever happens."""
    bin_dir = pg_server.find_bin_dir()
    if bin_dir is None:
        message = "PostgreSQL's initdb/pg_ctl not found (apt-get install postgresql)"
        if os.environ.get("CI"):
            pytest.fail(message + ": CI must run the store tests on both backends")
        pytest.skip(message)
    server = pg_server.PostgresServer(bin_dir)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_location(request, tmp_path):
    """What actors.db.database.Database opens: a SQLite file, or a fresh database on the session's server."""
    if request.param == "sqlite":
        yield tmp_path / "platform.db"
        return
    server = request.getfixturevalue("postgres_server")
    url = server.create_database()
    try:
        yield url
    finally:
        server.drop_database(url)
