"""Polling for tests: wait for a condition, never a fixed sleep (dcl_core.polling, failing as an AssertionError)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from dcl_core import polling


def wait_for(
    predicate: Callable[[], Any], *, timeout_s: float = 30.0, interval_s: float = 0.2, what: str = "condition"
):
    """Polls until predicate() is truthy and returns its value; the condition may raise while things settle."""
    try:
        return polling.poll(predicate, timeout_s=timeout_s, interval_s=interval_s, what=what, retry_errors=True)
    except polling.TimedOut as exc:
        raise AssertionError(str(exc)) from None


async def wait_until(
    check: Callable[[], Awaitable[Any]], *, timeout_s: float = 30.0, interval_s: float = 0.2, what: str = "condition"
):
    """wait_for for async tests: polls until `await check()` is truthy and returns its value."""
    try:
        return await polling.poll_async(check, timeout_s=timeout_s, interval_s=interval_s, what=what, retry_errors=True)
    except polling.TimedOut as exc:
        raise AssertionError(str(exc)) from None
