"""worker.agent.cpu_caps on a real LeaseRunner (no Ray): a lease's CPU quota begins once its `ray start` returned,
at the latest after the uncapped start window, at once for a lease that is no Ray node; never lifted again."""

from __future__ import annotations

import os
import secrets
import threading

import pytest

from dcl_core import protocol
from worker.agent import cpu_caps, leases
from worker.agent.sandbox import base, unsandboxed


class CountingRuntime(unsandboxed.UnsandboxedRuntime):
    """The unsandboxed runtime, whose sandboxes count their cap_cpu calls."""

    def __init__(self):
        self.caps: dict[str, int] = {}

    def create(self, spec: base.SandboxSpec) -> base.Sandbox:
        box, caps = super().create(spec), self.caps
        caps[spec.lease_id] = 0

        def cap_cpu() -> None:
            caps[spec.lease_id] += 1

        box.cap_cpu = cap_cpu
        return box


class ManualTimer:
    """A timer that fires when the test says so (a cancelled one never does)."""

    def __init__(self, interval_s: float, fire, name: str):
        self.interval_s, self._fire, self.name = interval_s, fire, name
        self.started = self.cancelled = False

    def start(self) -> None:
        self.started = True

    def cancel(self) -> None:
        self.cancelled = True

    def fire(self) -> None:
        if self.started and not self.cancelled:
            self._fire()


class ManualTimers(dict):
    """The timer factory CpuCaps takes: lease id -> the timer of its start window."""

    def __call__(self, interval_s: float, fire, name: str) -> ManualTimer:
        timer = ManualTimer(interval_s, fire, name)
        self[name.removeprefix("dcluster-cpu-cap-")] = timer
        return timer


@pytest.fixture
def runtime():
    return CountingRuntime()


@pytest.fixture
def timers():
    return ManualTimers()


def _runner(tmp_path, runtime, timers, uncapped_start_s: float = 60.0) -> leases.LeaseRunner:
    return leases.LeaseRunner(
        tmp_path / "leases",
        node_ip="127.0.0.1",
        base_env=dict(os.environ),
        runtime=runtime,
        caps=cpu_caps.CpuCaps(uncapped_start_s=uncapped_start_s, timer=timers),
    )


def _open(runner, purpose: str = protocol.NODE_LEASE) -> str:
    lease_id = "l-" + secrets.token_hex(6)
    cluster = {"cluster_id": "c-" + "a" * 12, "role": "worker"} if purpose == protocol.NODE_LEASE else {}
    runner.open(protocol.LeaseOpen(lease_id=lease_id, purpose=purpose, ray_auth_token="t" * 32, **cluster))
    return lease_id


def test_the_quota_begins_when_ray_start_returns_and_only_once(tmp_path, runtime, timers):
    runner = _runner(tmp_path, runtime, timers)
    try:
        lease = _open(runner)
        assert runner.run(lease, "echo warming up").ok
        assert runtime.caps[lease] == 0 and not runner.cpu_caps.is_capped(lease)
        assert runner.run(lease, ": ray start --address=x").ok  # what the launcher's start command looks like
        assert runtime.caps[lease] == 1 and runner.cpu_caps.is_capped(lease)
        # Another `ray start` (e.g. one a buyer sends through the node routes) never lifts or re-applies it.
        assert not runner.run(lease, "exit 3; ray start").ok
        assert runtime.caps[lease] == 1
    finally:
        runner.close_all(grace_s=0.5)


def test_a_start_that_fails_or_never_comes_is_capped_all_the_same(tmp_path, runtime, timers):
    runner = _runner(tmp_path, runtime, timers, uncapped_start_s=30.0)
    try:
        failed = _open(runner)
        assert not runner.run(failed, "ray start --no-such-flag 2>/dev/null || exit 1").ok
        assert runtime.caps[failed] == 1 and timers[failed].cancelled  # the failed one's window timer was stopped
        silent = _open(runner)
        assert timers[silent].started and timers[silent].interval_s == 30.0
        assert runtime.caps[silent] == 0  # uncapped until its window ends
        timers[silent].fire()
        timers[failed].fire()
        assert runtime.caps == {failed: 1, silent: 1} and runner.cpu_caps.is_capped(silent)
    finally:
        runner.close_all(grace_s=0.5)


def test_a_lease_that_is_no_ray_node_is_capped_as_it_opens(tmp_path, runtime, timers):
    runner = _runner(tmp_path, runtime, timers)
    try:
        check = _open(runner, purpose=protocol.GPU_CHECK_LEASE)
        assert runtime.caps[check] == 1 and check not in timers
    finally:
        runner.close_all(grace_s=0.5)


def test_a_closed_lease_leaves_no_timer(tmp_path, runtime, timers):
    runner = _runner(tmp_path, runtime, timers)
    lease = _open(runner)
    assert runner.close(lease).ok
    assert timers[lease].cancelled
    timers[lease].fire()
    assert runtime.caps[lease] == 0 and not runner.cpu_caps.is_capped(lease)


def test_the_agents_timer_is_a_daemon_thread_that_fires_once_its_window_ends():
    fired = threading.Event()
    timer = cpu_caps.thread_timer(0.0, fired.set, "dcluster-cpu-cap-l-1")
    assert timer.daemon and timer.name == "dcluster-cpu-cap-l-1"
    timer.start()
    assert fired.wait(10)
