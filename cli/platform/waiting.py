"""wait_for: poll a condition until it holds, or fail with a PlatformError that says what was awaited."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn

import tenacity

from cli.platform.errors import PlatformError


def wait_for(
    what: str,
    predicate: Callable[[], Any],
    timeout_s: float,
    interval_s: float = 0.5,
    on_timeout: Callable[[], str] | None = None,
) -> Any:
    """The first true value of predicate(), polled every interval_s; past timeout_s a PlatformError
    whose details are on_timeout() (a log tail). An exception of predicate() ends the wait at once."""

    def give_up(_: tenacity.RetryCallState) -> NoReturn:
        extra = on_timeout() if on_timeout else ""
        raise PlatformError(f"timed out after {timeout_s:.0f} s waiting for {what}", details=extra or None)

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_not_result(bool),
        stop=tenacity.stop_after_delay(timeout_s),
        wait=tenacity.wait_fixed(interval_s),
        retry_error_callback=give_up,
    )
    return retrying(predicate)
