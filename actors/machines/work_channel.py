"""WorkChannel: the agents' work queues, one per machine, handed over through their long poll.

An item is queued for a machine's agent (`push`), or queued and waited on until the agent posts its
answer (`send`, bounded); a waiting poll is woken at once. Plain asyncio, no I/O and no authority:
the registry checks who may poll or answer for a machine before it asks the channel.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any

import pydantic

from dcl_core import errors, ids, protocol


def unanswered(why: str) -> protocol.WorkResult:
    """The WorkResult of an item no agent answered, saying why."""
    return protocol.WorkResult(ok=False, output=why)


class WorkChannel:
    def __init__(self) -> None:
        self._queues: dict[str, collections.deque[dict[str, Any]]] = collections.defaultdict(collections.deque)
        self._ready: dict[str, asyncio.Event] = collections.defaultdict(asyncio.Event)
        # Items whose sender waits for the agent's answer: item id -> (machine id, future).
        self._pending: dict[str, tuple[str, str, asyncio.Future[protocol.WorkResult]]] = {}

    async def wait(self, machine_id: str, wait_s: float) -> list[dict[str, Any]]:
        """The machine's queued items, waiting up to wait_s for one; each is handed over once."""
        queue, ready = self._queues[machine_id], self._ready[machine_id]
        if not queue and wait_s > 0:
            ready.clear()
            try:
                await asyncio.wait_for(ready.wait(), timeout=wait_s)
            except TimeoutError:
                pass
        items = list(queue)
        queue.clear()
        return items

    def wake(self, machine_id: str) -> None:
        """A poll in flight returns now, with what is queued (the machine left, or its key was revoked)."""
        self._ready[machine_id].set()

    def push(self, machine_id: str, kind: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Queues an item for the machine's agent and wakes its poll."""
        item = {"id": ids.new_work_item_id(), "kind": kind, "payload": payload}
        self._queues[machine_id].append(item)
        self._ready[machine_id].set()
        return item

    async def send(
        self, machine_id: str, kind: str, payload: protocol.WorkPayload, timeout_s: float
    ) -> protocol.WorkResult:
        """Queues an item and waits for the agent's WorkResult; a silent agent gives ok=False."""
        item = self.push(machine_id, kind, payload.model_dump())
        future: asyncio.Future[protocol.WorkResult] = asyncio.get_running_loop().create_future()
        self._pending[item["id"]] = (machine_id, kind, future)
        try:
            return await asyncio.wait_for(future, timeout=timeout_s)
        except TimeoutError:
            return unanswered(f"machine {machine_id} did not answer {kind} within {timeout_s:.0f} s")
        finally:
            self._pending.pop(item["id"], None)
            # An item nobody waits for any more must not run late.
            queue = self._queues.get(machine_id)
            if queue and item in queue:
                queue.remove(item)

    def answer(self, machine_id: str, item_id: str, result: protocol.WorkResult) -> None:
        """The agent's answer to an item it was sent; NotFound for an item of another machine or none.

        An opened lease whose reported address or ports the platform will not connect to is 400, naming why,
        and is still handed to the waiting caller, which closes that node again."""
        pending = self._pending.get(item_id)
        if pending is None or pending[0] != machine_id:
            raise errors.NotFound(f"no work item {item_id} is waiting for an answer from machine {machine_id}")
        _, kind, future = pending
        if not future.done():
            future.set_result(result)
        if kind == protocol.LEASE_OPEN and result.ok:
            try:
                protocol.LeaseOpened.model_validate(result.data)
            except pydantic.ValidationError as exc:
                problems = "; ".join(str(e["msg"]) for e in exc.errors())
                raise errors.InvalidInput(f"the opened lease's data is refused: {problems[:500]}") from None
