"""The in-sandbox supervisor's stop, against a fake process table (it never signals a real process here)."""

from __future__ import annotations

import signal

from worker import procs
from worker.agent.sandbox import supervisor


class FakeNamespace:
    """A pid namespace whose processes exit on SIGTERM unless they wait on another one (Ray's GCS and its
    autoscaler's monitor, terminated together, wait on each other until SIGKILL)."""

    def __init__(self, table: dict[int, str], waits_on: dict[int, int] | None = None):
        self.table = dict(table)
        self.waits_on = dict(waits_on or {})
        self.terminated: set[int] = set()
        self.log: list[tuple] = []
        self.now = 0.0

    def processes(self) -> dict[int, str]:
        self._settle()
        return dict(self.table)

    def kill(self, pid: int, sig: int) -> None:
        if pid == -1:
            self.log.append(("all", sig))
            targets = list(self.table)
        else:
            if pid not in self.table:
                raise ProcessLookupError(pid)
            self.log.append((self.table[pid], sig))
            targets = [pid]
        for target in targets:
            if sig == signal.SIGKILL:
                self.table.pop(target, None)
            else:
                self.terminated.add(target)

    def _settle(self) -> None:
        for pid in list(self.terminated):
            other = self.waits_on.get(pid)
            if pid in self.table and not (other in self.table and other in self.terminated):
                self.table.pop(pid)

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def monotonic(self) -> float:
        return self.now


def test_the_fake_namespace_has_what_the_real_one_has():
    real = {n for n in vars(supervisor.PidNamespace) if not n.startswith("__")}
    assert real == {"processes", "kill", "sleep", "monotonic"} and all(
        callable(getattr(FakeNamespace, n)) for n in real
    )


RAY_HEAD = {10: "raylet", 11: "gcs_server", 12: "python3", 13: "ray::IDLE", 14: "ray-dashboard-N"}
MONITOR, GCS = 12, 11


def test_ray_order_ends_a_head_on_sigterm_within_the_grace():
    ns = FakeNamespace(RAY_HEAD, waits_on={MONITOR: GCS, GCS: MONITOR})
    assert supervisor.stop_everything(2.0, sorted(procs.STOP_FIRST), sorted(procs.STOP_LAST), ns=ns) == 5
    assert ns.table == {}
    assert ns.log[0] == ("raylet", signal.SIGTERM)
    assert ("gcs_server", signal.SIGTERM) not in ns.log[: ns.log.index(("python3", signal.SIGTERM)) + 1]
    assert ns.now < 0.5  # nobody waited out the grace
    assert ns.log[-1] == ("all", signal.SIGKILL)  # the sweep that ends anything forked meanwhile


def test_all_at_once_waits_out_the_grace_then_kills():
    ns = FakeNamespace(RAY_HEAD, waits_on={MONITOR: GCS, GCS: MONITOR})
    supervisor.stop_everything(2.0, ns=ns)
    assert ns.table == {}
    assert ns.now >= 2.0
    assert ns.log == [("all", signal.SIGTERM), ("all", signal.SIGKILL)]


def test_a_process_that_ignores_sigterm_is_killed_at_the_end_of_the_grace():
    ns = FakeNamespace({20: "raylet", 21: "stubborn"}, waits_on={21: 21})
    supervisor.stop_everything(1.5, ["raylet"], ["gcs_server"], ns=ns)
    assert ns.table == {}
    assert 1.5 <= ns.now < 1.6
