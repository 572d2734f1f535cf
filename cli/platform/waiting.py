"""wait_for: poll a condition until it holds (dcl_core.polling), or fail with a PlatformError that says what was
awaited."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cli.platform.errors import PlatformError
from dcl_core import polling


def wait_for(
    what: str,
    predicate: Callable[[], Any],
    timeout_s: float,
    interval_s: float = 0.5,
    on_timeout: Callable[[], str] | None = None,
) -> Any:
    """The first true value of predicate(), polled every interval_s; past timeout_s a PlatformError
    whose details are on_timeout() (a log tail). An exception of predicate() ends the wait at once."""
    try:
        return polling.poll(predicate, timeout_s=timeout_s, interval_s=interval_s, what=what)
    except polling.TimedOut as exc:
        raise PlatformError(str(exc), details=(on_timeout() if on_timeout else "") or None) from None
