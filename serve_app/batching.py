"""Many requests, one actor call: what the replica sends while an earlier call of the same kind is out.

An actor call costs more CPU (serialisation, the core worker on both sides) than the work most hot
routes ask of the actor. A Batcher sends the first request at once; requests that arrive while
that call is in flight wait and go together in the next one. So an idle platform adds no delay, and
a busy one makes fewer, larger calls (heartbeats: one transaction per batch). With `gather_s`, a busy
batcher also starts its calls at most that often: a call that returns quickly would otherwise be
followed at once by another of one or two items, each paying the whole cost of an actor call. With
`coalesce`, equal items waiting together are asked for once and share the one answer (reads only: many
clients polling one cluster); nothing is kept past the call that answered them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Generic, TypeVar

MAX_BATCH = 256

Item = TypeVar("Item", bound=Hashable)  # hashable: `coalesce` asks for equal items once
Answer = TypeVar("Answer")


class Batcher(Generic[Item, Answer]):
    """`await batcher(item)` → the answer for item from `send(items) -> answers` (same order; an answer
    that is an Exception is raised to its own caller alone; a failed `send` fails the whole batch)."""

    def __init__(
        self,
        send: Callable[[list[Item]], Awaitable[Sequence[Answer | BaseException]]],
        *,
        max_batch: int = MAX_BATCH,
        gather_s: float = 0.0,
        coalesce: bool = False,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ):
        self._send = send
        self._clock = clock  # None: the loop's clock
        self._sleep = sleep
        self._coalesce = coalesce  # items are hashable, and equal items get the same answer
        self._max_batch = max_batch
        self._gather_s = gather_s
        self._last_start = float("-inf")  # when the latest call was sent (on the clock)
        self._queue: list[tuple[Item, asyncio.Future[Answer]]] = []
        self._sender: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop it batches on: the first caller's

    async def __call__(self, item: Item) -> Answer:
        loop = asyncio.get_running_loop()
        self._loop = self._loop or loop
        if loop is not self._loop:  # a caller on another loop (Serve's proxy path beside the listener's): alone
            (answer,) = await self._send([item])
            if isinstance(answer, BaseException):
                raise answer
            return answer
        future: asyncio.Future[Answer] = loop.create_future()
        self._queue.append((item, future))
        if self._sender is None or self._sender.done():
            # Its own task: a caller that stops waiting (a client that hung up) cancels only its future.
            self._sender = asyncio.get_running_loop().create_task(self._drain())
        return await future

    def _now(self) -> float:
        if self._clock is not None:
            return self._clock()
        assert self._loop is not None  # set by the first call, before any batch is sent
        return self._loop.time()

    async def _drain(self) -> None:
        while self._queue:
            wait = self._last_start + self._gather_s - self._now()
            if wait > 0 and len(self._queue) < self._max_batch:
                await self._sleep(wait)  # the previous call started moments ago: let this batch fill
            self._last_start = self._now()
            batch, self._queue = self._queue[: self._max_batch], self._queue[self._max_batch :]
            batch = [(item, f) for item, f in batch if not f.done()]
            if not batch:
                continue
            items = [item for item, _ in batch]
            asked = list(dict.fromkeys(items)) if self._coalesce else items
            try:
                answers = await self._send(asked)
                if len(answers) != len(asked):
                    raise RuntimeError(f"{len(answers)} answers to a batch of {len(asked)}")
            except Exception as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            if self._coalesce:
                answer_of = dict(zip(asked, answers, strict=True))
                answers = [answer_of[item] for item in items]
            for (_, future), answer in zip(batch, answers, strict=True):
                if future.done():
                    continue
                if isinstance(answer, Exception):
                    future.set_exception(answer)
                elif isinstance(answer, BaseException):  # the actor-side call was cancelled
                    future.set_exception(RuntimeError(f"the batched call ended early: {answer!r}"))
                else:
                    future.set_result(answer)
