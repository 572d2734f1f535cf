"""cli.platform.waiting.wait_for: the first true value, a PlatformError with the log tail past the timeout."""

from __future__ import annotations

import time

import pytest

from cli.platform import errors as platform_errors
from cli.platform import waiting


def test_returns_the_first_true_value():
    calls = []

    def third_time() -> str | None:
        calls.append(1)
        return "up" if len(calls) == 3 else None

    assert waiting.wait_for("x", third_time, 5, interval_s=0.01) == "up" and len(calls) == 3


def test_times_out_with_what_it_waited_for_and_the_details():
    t0 = time.monotonic()
    with pytest.raises(platform_errors.PlatformError, match="timed out after 0 s waiting for the API") as err:
        waiting.wait_for("the API", lambda: False, 0.2, interval_s=0.05, on_timeout=lambda: "log tail")
    assert err.value.details == "log tail" and 0.2 <= time.monotonic() - t0 < 2


def test_an_error_of_the_condition_ends_the_wait_at_once():
    def failed() -> bool:
        raise platform_errors.PlatformError("the Serve app failed to deploy")

    with pytest.raises(platform_errors.PlatformError, match="failed to deploy"):
        waiting.wait_for("the API", failed, 60)
