"""worker.agent.start_once on a real LeaseRunner (no Ray): a `ray start` delivered twice runs once while its
raylet answers; a stop, a failure or a raylet that is gone lets it run again."""

from __future__ import annotations

import concurrent.futures
import os
import secrets
import socket

import pytest

from dcl_core import protocol
from worker.agent import leases, start_once

# Looks like the launcher's start to the agent (`ray start` in it), counts its runs in the lease's home.
START = ": ray start --head; echo run >> ~/runs; sleep 0.5"


@pytest.fixture
def runner(tmp_path):
    runner = leases.LeaseRunner(tmp_path / "leases", node_ip="127.0.0.1", base_env=dict(os.environ))
    yield runner
    runner.close_all(grace_s=0.5)


def _open(runner) -> str:
    lease_id = "l-" + secrets.token_hex(6)
    runner.open(protocol.LeaseOpen(lease_id=lease_id, cluster_id="c-" + "a" * 12, role="head", ray_auth_token="t" * 32))
    return lease_id


def _runs(runner, lease_id) -> int:
    path = runner.root / lease_id / "home" / "runs"
    return len(path.read_text().splitlines()) if path.exists() else 0


def _raylet(runner, lease_id) -> socket.socket:
    """Something listening where the lease's raylet would: its node-manager port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", runner.ports_of(lease_id).node_manager))
    sock.listen()
    return sock


def test_a_start_delivered_again_while_it_runs_waits_for_it_and_gets_its_answer(runner):
    lease = _open(runner)
    raylet = _raylet(runner, lease)
    try:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            first = pool.submit(runner.run, lease, START)
            again = pool.submit(runner.run, lease, START)
            answers = [first.result(30), again.result(30)]
        assert all(a.ok for a in answers) and _runs(runner, lease) == 1
        assert sum(a.output.startswith(start_once.REPLAYED_NOTE) for a in answers) == 1
        assert runner.run(lease, START).ok and _runs(runner, lease) == 1  # later too, while the raylet answers
    finally:
        raylet.close()


def test_a_stop_a_failure_or_a_gone_raylet_lets_it_run_again(runner):
    lease = _open(runner)
    assert runner.run(lease, START).ok
    assert runner.run(lease, START).ok and _runs(runner, lease) == 2  # no raylet answers: it runs again
    raylet = _raylet(runner, lease)
    try:
        assert runner.run(lease, START).ok and _runs(runner, lease) == 2  # its raylet answers now: not again
        assert runner.run(lease, "ray stop --force 2>/dev/null; true").ok
        assert runner.run(lease, START).ok and _runs(runner, lease) == 3
        failing = START + "; exit 1"
        assert not runner.run(lease, failing).ok and not runner.run(lease, failing).ok
        assert _runs(runner, lease) == 5
        # Another start (other command or environment) is not the same delivery.
        assert runner.run(lease, START, env={"X": "1"}).ok and _runs(runner, lease) == 6
    finally:
        raylet.close()
