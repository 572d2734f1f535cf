"""A lease's `ray start`, run at most once however often it is delivered.

The platform may deliver a command twice: a ProviderRegistry restarted mid-call has its call retried by
Ray, and the node routes send a command again after a 503. A second `ray start --head` in the same lease
fails ("already running at ..."), and the launcher then fails the whole cluster. So the same start (command
and environment), delivered again while the first runs, waits for it and gets its answer; delivered after it
succeeded, while the lease's raylet still answers, it gets that answer too. A command that stops Ray, a
failed start, or a raylet that is gone lets the next start run anew.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import socket
import threading
from collections.abc import Callable, Mapping

from dcl_core import protocol

REPLAYED_NOTE = "[dcluster-agent] this `ray start` was delivered again: the answer of its first run\n"


def start_key(cmd: str, env: Mapping[str, str] | None) -> str:
    return hashlib.sha256(json.dumps([cmd, sorted((env or {}).items())]).encode()).hexdigest()


def raylet_answers(host: str, port: int, timeout_s: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


@dataclasses.dataclass
class _Start:
    key: str
    done: threading.Event = dataclasses.field(default_factory=threading.Event)
    result: protocol.WorkResult | None = None


class StartOnce:
    """One record per lease: its latest `ray start`; thread-safe."""

    def __init__(self):
        self._lock = threading.Lock()
        self._starts: dict[str, _Start] = {}

    def run(
        self,
        lease_id: str,
        key: str,
        run: Callable[[], protocol.WorkResult],
        ray_up: Callable[[], bool],
        timeout_s: float,
    ) -> protocol.WorkResult:
        while True:
            with self._lock:
                start = self._starts.get(lease_id)
                first = start is None or start.key != key
                if first:
                    start = self._starts[lease_id] = _Start(key)
            if first:
                try:
                    start.result = run()
                finally:
                    if start.result is None:  # it raised: the next delivery runs anew
                        self.forget(lease_id)
                    start.done.set()
                return start.result
            if not start.done.wait(timeout_s):
                return protocol.WorkResult(
                    ok=False,
                    exit_code=124,
                    output=(
                        f"[dcluster-agent] this `ray start` was delivered again while its first run went on for "
                        f"more than {timeout_s:g} s"
                    ),
                )
            if start.result is not None and start.result.ok and ray_up():
                return start.result.model_copy(update={"output": REPLAYED_NOTE + start.result.output})
            with self._lock:
                if self._starts.get(lease_id) is start:
                    del self._starts[lease_id]

    def forget(self, lease_id: str) -> None:
        """Ray was stopped (or the lease closed): the next start runs."""
        with self._lock:
            self._starts.pop(lease_id, None)
