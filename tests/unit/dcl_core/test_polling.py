"""dcl_core.polling, on a fake clock: the first truthy value, TimedOut naming what was awaited, and what an
exception of the condition does."""

from __future__ import annotations

import asyncio

import pytest

from dcl_core import polling


class FakeTime:
    """A clock that moves only when the poll sleeps."""

    def __init__(self):
        self.now, self.sleeps = 100.0, []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_the_first_truthy_value_is_returned_after_sleeping_the_interval_between_tries():
    fake, answers = FakeTime(), iter([None, 0, "up", "later"])
    got = polling.poll(lambda: next(answers), timeout_s=10, interval_s=0.5, clock=fake.clock, sleep=fake.sleep)
    assert got == "up" and fake.sleeps == [0.5, 0.5]


def test_past_the_timeout_it_names_what_it_waited_for():
    fake, tries = FakeTime(), []
    with pytest.raises(polling.TimedOut, match="timed out after 2 s waiting for the API$") as err:
        polling.poll(
            lambda: tries.append(fake.now),
            timeout_s=2,
            interval_s=0.5,
            what="the API",
            clock=fake.clock,
            sleep=fake.sleep,
        )
    assert tries == [100.0, 100.5, 101.0, 101.5, 102.0]  # tried once more at the deadline
    assert err.value.last_error is None


def test_an_error_ends_the_wait_at_once_unless_errors_are_retried():
    fake = FakeTime()

    def refused():
        raise ConnectionRefusedError("not listening yet")

    with pytest.raises(ConnectionRefusedError):
        polling.poll(refused, timeout_s=10, interval_s=1, clock=fake.clock, sleep=fake.sleep)
    assert fake.sleeps == []
    with pytest.raises(polling.TimedOut, match=r"waiting for the port \(last error: ConnectionRefusedError") as err:
        polling.poll(
            refused, timeout_s=3, interval_s=1, what="the port", retry_errors=True, clock=fake.clock, sleep=fake.sleep
        )
    assert isinstance(err.value.last_error, ConnectionRefusedError) and fake.sleeps == [1, 1, 1]


def test_the_async_form_awaits_the_check_and_sleeps_on_the_loop():
    answers = iter([False, {"status": "running"}])

    async def check():
        return next(answers)

    assert asyncio.run(polling.poll_async(check, timeout_s=10, interval_s=0)) == {"status": "running"}

    async def never():
        return None

    fake = FakeTime()
    with pytest.raises(polling.TimedOut, match="waiting for the cluster"):
        asyncio.run(polling.poll_async(never, timeout_s=0, interval_s=0, what="the cluster", clock=fake.clock))
