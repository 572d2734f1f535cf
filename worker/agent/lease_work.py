"""The agent's lease work items: queued per lease, carried out by the LeaseRunner, their results posted back."""

from __future__ import annotations

import base64
import collections
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import pydantic

import dcluster
from dcl_core import protocol
from worker.agent import leases

logger = logging.getLogger(__name__)

RESULT_POST_ATTEMPTS = 6  # backoff 1, 2, 4, 8, 16 s between them: about half a minute


class LeaseWork:
    """Runs lease items of one lease in order on one thread, leases in parallel; never blocks the poll thread."""

    def __init__(self, runner: leases.LeaseRunner, *, post_result: Callable[[str, protocol.WorkResult], bool]):
        self._runner = runner
        self._post_result = post_result
        # Lease id -> pending items. A lease's thread exists while it has items and ends when its queue is empty.
        self._queues: dict[str, collections.deque] = {}
        self._queues_lock = threading.Lock()

    def queues(self) -> dict[str, int]:
        """Work items waiting per lease thread (a lease's thread ends, and leaves this, when it is idle)."""
        with self._queues_lock:
            return {k: len(q) for k, q in self._queues.items()}

    def close_stale(self, lease_ids: list) -> None:
        """Leases the platform ended while we could not hear it: stop their processes (behind their queue)."""
        for lease_id in lease_ids:
            if isinstance(lease_id, str) and lease_id in self._runner.lease_ids():
                logger.info("lease %s has no live cluster on the platform: closing it", lease_id)
                self.enqueue({"id": None, "kind": protocol.LEASE_CLOSE, "payload": {"lease_id": lease_id}})

    def enqueue(self, item: dict) -> None:
        """Queue a lease item behind the earlier items of its lease (a close goes first); never blocks the poll
        thread."""
        payload = item.get("payload")
        lease_id = payload.get("lease_id") if isinstance(payload, dict) else None
        key = lease_id if isinstance(lease_id, str) else ""  # "": no lease id; validation will say so
        if item.get("kind") == protocol.LEASE_CLOSE and key:
            # A close never waits behind the lease's running command (a slow `ray start`, say): it
            # stops that command's processes too, and what is queued after it finds the lease closed.
            threading.Thread(target=self._handle, args=(item,), name=f"dcluster-close-{key}", daemon=True).start()
            return
        with self._queues_lock:
            queue = self._queues.get(key)
            start = queue is None
            if start:
                queue = self._queues[key] = collections.deque()
            queue.append(item)
        if start:
            threading.Thread(
                target=self._drain, args=(key,), name=f"dcluster-lease-{key or 'invalid'}", daemon=True
            ).start()

    def _drain(self, key: str) -> None:
        while True:
            with self._queues_lock:
                queue = self._queues[key]
                if not queue:
                    del self._queues[key]
                    return
                item = queue.popleft()
            try:
                self._handle(item)
            except Exception:
                logger.exception("lease work item %s failed", item.get("id"))

    def _handle(self, item: dict) -> None:
        item_id, kind = item.get("id"), item.get("kind")
        started = time.monotonic()
        result = self._result(kind, item.get("payload"))
        logger.debug(
            "work item %s (%s): ok=%s exit %s in %.1f s",
            item_id,
            kind,
            result.ok,
            result.exit_code,
            time.monotonic() - started,
        )
        if item_id is None:  # the agent's own item (a stale lease closed): nobody waits for it
            return
        if not isinstance(item_id, str) or not item_id:
            logger.warning("work item of kind %r has no id; its result cannot be posted", kind)
            return
        self._post_result(item_id, result)

    def _result(self, kind: Any, payload: Any) -> protocol.WorkResult:
        """Carry out one lease work item; every failure becomes a WorkResult with ok=False."""
        try:
            if kind == protocol.LEASE_OPEN:
                opened = self._runner.open(protocol.LeaseOpen.model_validate(payload))
                return protocol.WorkResult(ok=True, exit_code=0, data=opened.model_dump())
            if kind == protocol.LEASE_EXEC:
                req = protocol.LeaseExec.model_validate(payload)
                if req.op == "run":
                    return self._runner.run(req.lease_id, req.cmd, req.env, req.timeout_s)
                return self._runner.put_file(req.lease_id, req.path, base64.b64decode(req.content_b64, validate=True))
            if kind == protocol.LEASE_CLOSE:
                req = protocol.LeaseClose.model_validate(payload)
                return self._runner.close(req.lease_id, req.grace_s)
            return protocol.WorkResult(ok=False, output=f"unknown lease work kind {kind!r}")
        except pydantic.ValidationError as exc:
            # Only locations and messages: pydantic's own text would echo the input, auth token included.
            errors = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'payload'}: {e['msg']}" for e in exc.errors(include_input=False)
            )
            logger.warning("invalid %s payload: %s", kind, errors)
            return protocol.WorkResult(ok=False, output=f"invalid {kind} payload: {errors}")
        except leases.LeaseError as exc:
            logger.warning("%s: %s", kind, exc)
            return protocol.WorkResult(ok=False, output=str(exc))
        except Exception as exc:
            logger.exception("%s failed", kind)
            return protocol.WorkResult(ok=False, output=f"{kind} failed on the agent: {type(exc).__name__}: {exc}")


class ResultPoster:
    """Sends work items' results to the platform, retrying with backoff while it is unreachable."""

    def __init__(
        self,
        client: dcluster.PlatformApi,
        *,
        machine_id: Callable[[], str | None],
        wait: Callable[[float], bool],
        rand: Callable[[], float],
    ):
        self._client = client
        self._machine_id = machine_id
        self._wait = wait  # True when the agent is stopping
        self._rand = rand

    def post(self, item_id: str, result: protocol.WorkResult) -> bool:
        """Send the result, retrying with backoff while the platform is unreachable; True once accepted."""
        body = result.model_dump(mode="json")
        backoff = dcluster.Backoff(rand=self._rand)
        for attempt in range(1, RESULT_POST_ATTEMPTS + 1):
            machine_id = self._machine_id()
            if machine_id is None:
                error: object = "not registered"
            else:
                try:
                    self._client.post_result(machine_id, item_id, body)
                    return True
                except dcluster.ApiError as exc:
                    if exc.status_code == 404:
                        logger.info("the platform no longer waits for work item %s; result dropped", item_id)
                        return False
                    if not exc.is_transient:
                        logger.warning("the platform refused the result of work item %s: %s", item_id, exc)
                        return False
                    error = exc
                except dcluster.PlatformUnreachable as exc:
                    error = exc
                except Exception:
                    logger.exception("posting the result of work item %s failed", item_id)
                    return False
            if attempt == RESULT_POST_ATTEMPTS or self._wait(backoff.next()):
                break
            logger.debug("posting the result of work item %s failed (%s); retrying", item_id, error)
        logger.warning("gave up posting the result of work item %s after %d attempt(s): %s", item_id, attempt, error)
        return False
