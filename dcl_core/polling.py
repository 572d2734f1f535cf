"""Waiting for a condition by polling it, never by a fixed sleep: the one loop that the CLI, the tests and the
benchmarks wrap, each for its own error type."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


class TimedOut(Exception):
    """The condition did not hold within the time given; the text says what was awaited (and the last error)."""

    def __init__(self, what: str, timeout_s: float, last_error: Exception | None = None) -> None:
        extra = f" (last error: {last_error!r})" if last_error is not None else ""
        super().__init__(f"timed out after {timeout_s:.0f} s waiting for {what}{extra}")
        self.what, self.timeout_s, self.last_error = what, timeout_s, last_error


class _Deadline:
    """The polling loop's bookkeeping, shared by the sync and async forms: when to give up, the last error."""

    def __init__(self, what: str, timeout_s: float, clock: Callable[[], float]) -> None:
        self.what, self.timeout_s, self.clock = what, timeout_s, clock
        self.at = clock() + timeout_s
        self.last_error: Exception | None = None

    def check(self) -> None:
        if self.clock() >= self.at:
            raise TimedOut(self.what, self.timeout_s, self.last_error)


def poll(
    predicate: Callable[[], T | None],
    *,
    timeout_s: float,
    interval_s: float,
    what: str = "condition",
    retry_errors: bool = False,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], object] = time.sleep,
) -> T:
    """The first truthy value of predicate(), tried every interval_s; past timeout_s, TimedOut. An exception of
    predicate() ends the wait, unless retry_errors (things may raise while they settle): then it is "not yet",
    and the last one is named in TimedOut."""
    deadline = _Deadline(what, timeout_s, clock)
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:
            if not retry_errors:
                raise
            deadline.last_error = exc
        deadline.check()
        sleep(interval_s)


async def poll_async(
    check: Callable[[], Awaitable[T | None]],
    *,
    timeout_s: float,
    interval_s: float,
    what: str = "condition",
    retry_errors: bool = False,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """poll for async code: the first truthy value of `await check()`, waiting with asyncio.sleep."""
    deadline = _Deadline(what, timeout_s, clock)
    while True:
        try:
            value = await check()
            if value:
                return value
        except Exception as exc:
            if not retry_errors:
                raise
            deadline.last_error = exc
        deadline.check()
        await asyncio.sleep(interval_s)
