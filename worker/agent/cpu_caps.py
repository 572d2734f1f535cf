"""When a lease's CPU quota begins: once Ray is up in it (a `ray start` of the lease returned), and at the latest
UNCAPPED_START_S after it opened; a lease that is not a Ray node (the GPU check) is capped as it opens.

Ray's start is a burst: a dozen Python processes import at once (GCS, the dashboard and its modules, the agents,
the autoscaler). Capped at its one CPU from the first moment, a head took 6.5-7 s to start instead of ~4.5 s.
Until the cap, the lease's CPU shares still weigh it among the machine's leases (cgroups.py): it takes idle
cores only, never another lease's share. The cap is never lifted again, whatever the lease runs later.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from typing import Protocol

from dcl_core import commands
from worker.agent.sandbox import base as sandbox

logger = logging.getLogger(__name__)

UNCAPPED_START_S = 60.0


class Timer(Protocol):
    """What CpuCaps needs of a timer: threading.Timer's start and cancel."""

    def start(self) -> None: ...

    def cancel(self) -> None: ...


# (seconds, what to call then, a name for it) -> a timer not yet started
TimerFactory = Callable[[float, Callable[[], None], str], Timer]


def thread_timer(interval_s: float, fire: Callable[[], None], name: str) -> Timer:
    """A daemon threading.Timer: a pending cap never keeps the agent's process alive."""
    timer = threading.Timer(interval_s, fire)
    timer.daemon = True
    timer.name = name
    return timer


class CpuCaps:
    """Applies each lease's CPU quota once (Sandbox.cap_cpu) at the moment above; thread-safe. The timer
    that ends a lease's uncapped start window is injected (tests fire it themselves)."""

    def __init__(self, *, uncapped_start_s: float = UNCAPPED_START_S, timer: TimerFactory = thread_timer):
        self._uncapped_start_s = uncapped_start_s
        self._make_timer = timer
        self._lock = threading.Lock()
        self._timers: dict[str, Timer] = {}
        self._capped: set[str] = set()

    def opened(self, lease_id: str, box: sandbox.Sandbox, *, ray_node: bool) -> None:
        if not ray_node:
            self._cap(lease_id, box)
            return
        timer = self._make_timer(
            self._uncapped_start_s, functools.partial(self._cap, lease_id, box), f"dcluster-cpu-cap-{lease_id}"
        )
        with self._lock:
            self._timers[lease_id] = timer
        timer.start()

    def command_ended(self, lease_id: str, box: sandbox.Sandbox, cmd: str) -> None:
        if commands.starts_ray(cmd):
            self._cap(lease_id, box)

    def closed(self, lease_id: str) -> None:
        with self._lock:
            timer = self._timers.pop(lease_id, None)
            self._capped.discard(lease_id)
        if timer is not None:
            timer.cancel()

    def is_capped(self, lease_id: str) -> bool:
        with self._lock:
            return lease_id in self._capped

    def _cap(self, lease_id: str, box: sandbox.Sandbox) -> None:
        with self._lock:
            if lease_id in self._capped:
                return
            self._capped.add(lease_id)
            timer = self._timers.pop(lease_id, None)
        if timer is not None:
            timer.cancel()
        try:
            box.cap_cpu()
        except Exception:
            logger.exception("lease %s: its CPU quota could not be applied", lease_id)
