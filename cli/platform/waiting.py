"""wait_for: poll a condition until it holds, or fail with a PlatformError that says what was awaited."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from cli.platform.errors import PlatformError


def wait_for(
    what: str,
    predicate: Callable[[], Any],
    timeout_s: float,
    interval_s: float = 0.5,
    on_timeout: Callable[[], str] | None = None,
) -> Any:
    """The first true value of predicate(), polled every interval_s; past timeout_s a PlatformError
    whose details are on_timeout() (a log tail)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            extra = on_timeout() if on_timeout else ""
            raise PlatformError(f"timed out after {timeout_s:.0f} s waiting for {what}", details=extra or None)
        time.sleep(interval_s)
