import asyncio

import pytest

from dcl_core import errors
from serve_app import batching


def test_requests_made_while_a_call_is_out_go_together_in_the_next_one():
    async def go():
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
        return calls, results

    calls, results = asyncio.run(go())
    assert calls == [[1], [2, 3, 4]]  # an idle batcher sends at once; then one call for those that waited
    assert results[:2] == [10, 20] and results[3] == 40
    assert isinstance(results[2], errors.NotFound)  # an answer that is an error reaches its own caller alone


def test_a_failed_call_fails_its_batch_and_the_next_one_still_goes():
    async def go():
        attempts = []

        async def send(items):
            attempts.append(list(items))
            if len(attempts) == 1:
                raise RuntimeError("actor unavailable")
            return items

        batcher = batching.Batcher(send)
        with pytest.raises(RuntimeError, match="unavailable"):
            await batcher("a")
        return await batcher("b")

    assert asyncio.run(go()) == "b"


def test_a_caller_that_stops_waiting_cancels_neither_the_call_nor_the_others():
    async def go():
        release = asyncio.Event()
        sent = []

        async def send(items):
            sent.append(list(items))
            await release.wait()
            return [f"ok {i}" for i in items]

        batcher = batching.Batcher(send, max_batch=2)
        waiting = [asyncio.ensure_future(batcher(0))]
        await asyncio.sleep(0.01)  # its call is out
        waiting += [asyncio.ensure_future(batcher(i)) for i in (1, 2, 3)]
        await asyncio.sleep(0)
        waiting[0].cancel()  # clients hung up: one whose call is out, one still queued
        waiting[2].cancel()
        await asyncio.sleep(0)
        release.set()
        done = await asyncio.gather(waiting[1], waiting[3])
        return sent, done

    sent, done = asyncio.run(go())
    assert sent == [[0], [1], [3]] and done == ["ok 1", "ok 3"]  # a queued request no one waits for is not sent


def test_a_batch_answered_with_the_wrong_count_is_an_error_not_a_mix_up():
    async def go():
        async def send(items):
            return items[:-1]

        batcher = batching.Batcher(send)
        return await asyncio.gather(batcher(1), batcher(2), return_exceptions=True)

    results = asyncio.run(go())
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


def test_a_busy_batcher_sends_at_most_once_per_gather_interval_and_an_idle_one_at_once():
    async def go():
        calls = []

        async def send(items):
            calls.append((asyncio.get_running_loop().time(), list(items)))
            return items

        batcher = batching.Batcher(send, gather_s=0.4)
        t0 = asyncio.get_running_loop().time()
        assert await batcher(1) == 1  # idle: sent at once
        # Arrivals right after a call started wait for the interval and go together.
        rest = [asyncio.ensure_future(batcher(i)) for i in (2, 3)]
        await asyncio.sleep(0.05)
        rest.append(asyncio.ensure_future(batcher(4)))
        assert await asyncio.gather(*rest) == [2, 3, 4]
        await asyncio.sleep(0.5)  # quiet for longer than the interval: the next one goes at once
        t1 = asyncio.get_running_loop().time()
        assert await batcher(5) == 5
        return calls, t0, t1

    calls, t0, t1 = asyncio.run(go())
    assert [items for _, items in calls] == [[1], [2, 3, 4], [5]]
    assert calls[0][0] - t0 < 0.2 and calls[2][0] - t1 < 0.2  # at once (a busy machine may take a moment)
    assert calls[1][0] - calls[0][0] >= 0.4


def test_a_coalescing_batcher_asks_once_for_equal_items_waiting_together():
    async def go():
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
        return calls, results, again

    calls, results, again = asyncio.run(go())
    assert calls == [["a"], ["b", "a", "gone"], ["a"]]
    assert results[0] == results[2] == again == {"read": "a"} and results[1] is results[3]
    assert all(isinstance(r, errors.NotFound) for r in results[4:])
