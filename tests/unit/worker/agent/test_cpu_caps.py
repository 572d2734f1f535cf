"""worker.agent.cpu_caps on a real LeaseRunner (no Ray): a lease's CPU quota begins once its `ray start` returned,
at the latest after the uncapped start window, at once for a lease that is no Ray node; never lifted again."""

from __future__ import annotations

import os
import secrets
import time

import pytest

from dcl_core import protocol
from tests.waiting import wait_for
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


@pytest.fixture
def runtime():
    return CountingRuntime()


def _runner(tmp_path, runtime, uncapped_start_s: float = 60.0) -> leases.LeaseRunner:
    return leases.LeaseRunner(
        tmp_path / "leases",
        node_ip="127.0.0.1",
        base_env=dict(os.environ),
        runtime=runtime,
        caps=cpu_caps.CpuCaps(uncapped_start_s=uncapped_start_s),
    )


def _open(runner, purpose: str = protocol.NODE_LEASE) -> str:
    lease_id = "l-" + secrets.token_hex(6)
    cluster = {"cluster_id": "c-" + "a" * 12, "role": "worker"} if purpose == protocol.NODE_LEASE else {}
    runner.open(protocol.LeaseOpen(lease_id=lease_id, purpose=purpose, ray_auth_token="t" * 32, **cluster))
    return lease_id


def test_the_quota_begins_when_ray_start_returns_and_only_once(tmp_path, runtime):
    runner = _runner(tmp_path, runtime)
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


def test_a_start_that_fails_or_never_comes_is_capped_all_the_same(tmp_path, runtime):
    runner = _runner(tmp_path, runtime, uncapped_start_s=0.3)
    try:
        failed = _open(runner)
        assert not runner.run(failed, "ray start --no-such-flag 2>/dev/null || exit 1").ok
        assert runtime.caps[failed] == 1
        started = time.monotonic()
        silent = _open(runner)
        wait_for(lambda: runtime.caps[silent] == 1, timeout_s=10, interval_s=0.05)
        assert time.monotonic() - started >= 0.2
        time.sleep(0.5)
        assert runtime.caps == {failed: 1, silent: 1}  # the failed one's window timer was stopped
    finally:
        runner.close_all(grace_s=0.5)


def test_a_lease_that_is_no_ray_node_is_capped_as_it_opens(tmp_path, runtime):
    runner = _runner(tmp_path, runtime)
    try:
        check = _open(runner, purpose=protocol.GPU_CHECK_LEASE)
        assert runtime.caps[check] == 1
    finally:
        runner.close_all(grace_s=0.5)


def test_a_closed_lease_leaves_no_timer(tmp_path, runtime):
    runner = _runner(tmp_path, runtime, uncapped_start_s=0.3)
    lease = _open(runner)
    assert runner.close(lease).ok
    time.sleep(0.6)
    assert runtime.caps[lease] == 0 and not runner.cpu_caps.is_capped(lease)
