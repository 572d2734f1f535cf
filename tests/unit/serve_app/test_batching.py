import asyncio

import pytest

from dcl_core import errors
from serve_app import batching

pytestmark = pytest.mark.anyio


async def test_requests_made_while_a_call_is_out_go_together_in_the_next_one():
    calls, release = [], asyncio.Event()

    async def send(items):
        calls.append(list(items))
        if len(calls) == 1:
            await release.wait()  # the first call is still out while the others arrive
        return [item * 10 if item != 3 else errors.NotFound("three") for item in items]

    batcher = batching.Batcher(send)
    first = asyncio.ensure_future(batcher(1))
    await asyncio.sleep(0)
    rest = [asyncio.ensure_future(batcher(i)) for i in (2, 3, 4)]
    await asyncio.sleep(0)
    release.set()
    results = await asyncio.gather(first, *rest, return_exceptions=True)

    assert calls == [[1], [2, 3, 4]]  # an idle batcher sends at once; then one call for those that waited
    assert results[:2] == [10, 20] and results[3] == 40
    assert isinstance(results[2], errors.NotFound)  # an answer that is an error reaches its own caller alone


async def test_a_failed_call_fails_its_batch_and_the_next_one_still_goes():
    attempts = []

    async def send(items):
        attempts.append(list(items))
        if len(attempts) == 1:
            raise RuntimeError("actor unavailable")
        return items

    batcher = batching.Batcher(send)
    with pytest.raises(RuntimeError, match="unavailable"):
        await batcher("a")

    assert (await batcher("b")) == "b"


async def test_a_caller_that_stops_waiting_cancels_neither_the_call_nor_the_others():
    release = asyncio.Event()
    sent, out = [], asyncio.Event()

    async def send(items):
        sent.append(list(items))
        out.set()
        await release.wait()
        return [f"ok {i}" for i in items]

    batcher = batching.Batcher(send, max_batch=2)
    waiting = [asyncio.ensure_future(batcher(0))]
    await asyncio.wait_for(out.wait(), 5)  # its call is out
    waiting += [asyncio.ensure_future(batcher(i)) for i in (1, 2, 3)]
    await asyncio.sleep(0)
    waiting[0].cancel()  # clients hung up: one whose call is out, one still queued
    waiting[2].cancel()
    await asyncio.sleep(0)
    release.set()
    done = await asyncio.gather(waiting[1], waiting[3])

    assert sent == [[0], [1], [3]] and done == ["ok 1", "ok 3"]  # a queued request no one waits for is not sent


async def test_a_batch_answered_with_the_wrong_count_is_an_error_not_a_mix_up():
    async def send(items):
        return items[:-1]

    batcher = batching.Batcher(send)

    results = await asyncio.gather(batcher(1), batcher(2), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)


def test_a_caller_on_another_event_loop_is_answered_alone():
    sent = []

    async def send(items):
        sent.append(list(items))
        return [f"ok {i}" for i in items]

    batcher = batching.Batcher(send)
    assert asyncio.run(batcher(1)) == "ok 1"
    assert asyncio.run(batcher(2)) == "ok 2"  # a second loop: its own call, never the first loop's queue
    assert sent == [[1], [2]]


async def test_a_busy_batcher_sends_at_most_once_per_gather_interval_and_an_idle_one_at_once(clock):
    calls, slept, woken = [], [], asyncio.Event()

    async def send(items):
        calls.append((clock(), list(items)))
        return items

    async def sleep(seconds):  # the gather interval's wait: over when the test has moved the clock
        slept.append(seconds)
        await woken.wait()
        woken.clear()

    batcher = batching.Batcher(send, gather_s=0.4, clock=clock, sleep=sleep)
    t0 = clock()
    assert await batcher(1) == 1  # idle: sent at once
    # Arrivals right after a call started wait for the interval and go together.
    rest = [asyncio.ensure_future(batcher(i)) for i in (2, 3)]
    for _ in range(10):
        await asyncio.sleep(0)
    assert slept == [pytest.approx(0.4)] and len(calls) == 1
    clock.advance(0.05)
    rest.append(asyncio.ensure_future(batcher(4)))
    for _ in range(10):
        await asyncio.sleep(0)
    clock.advance(0.35)
    woken.set()
    assert await asyncio.gather(*rest) == [2, 3, 4]
    clock.advance(0.5)  # quiet for longer than the interval: the next one goes at once
    t1 = clock()
    assert await batcher(5) == 5
    assert [items for _, items in calls] == [[1], [2, 3, 4], [5]]
    assert calls[0][0] == t0 and calls[2][0] == t1 and len(slept) == 1  # idle: at once
    assert calls[1][0] - calls[0][0] == pytest.approx(0.4)


async def test_a_coalescing_batcher_asks_once_for_equal_items_waiting_together():
    calls, release = [], asyncio.Event()

    async def send(items):
        calls.append(list(items))
        if len(calls) == 1:
            await release.wait()
        return [{"read": item} if item != "gone" else errors.NotFound("gone") for item in items]

    batcher = batching.Batcher(send, coalesce=True)
    first = asyncio.ensure_future(batcher("a"))
    await asyncio.sleep(0)
    rest = [asyncio.ensure_future(batcher(i)) for i in ("b", "a", "b", "gone", "gone")]
    await asyncio.sleep(0)
    release.set()
    results = await asyncio.gather(first, *rest, return_exceptions=True)
    again = await batcher("a")  # nothing is kept past the call that answered: asked anew

    assert calls == [["a"], ["b", "a", "gone"], ["a"]]
    assert results[0] == results[2] == again == {"read": "a"} and results[1] is results[3]
    assert all(isinstance(r, errors.NotFound) for r in results[4:])
