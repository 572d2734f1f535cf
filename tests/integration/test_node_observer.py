"""NodeObserver against a bare Ray head and worker with token auth (explicit ports, own temp dirs)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

from actors.clusters import node_observer
from dcl_core import protocol, ray_ports
from tests import typed_rows
from tests.waiting import wait_until
from worker import procs

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

RAY = str(Path(sys.executable).parent / "ray")


def _env(home: Path, token: str, ports: ray_ports.RayPorts, labels: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}  # no other cluster's settings
    env.update(
        HOME=str(home),
        RAY_USAGE_STATS_ENABLED="0",
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=token,
        RAY_OVERRIDE_LABELS=json.dumps(labels),
        **ports.env(),
    )
    return env


@pytest.fixture(scope="module")
def bare_cluster():
    """A head and one worker labelled as leases, as agents start them; stopped by owner tag after."""
    tag = "dcl-obs-" + secrets.token_hex(4)
    root = Path(tempfile.mkdtemp(prefix="dcl-obs-"))
    (root / "home").mkdir()
    token = secrets.token_hex(32)
    head = procs.allocate_ray_ports()
    worker = procs.allocate_ray_ports(exclude=tuple(sorted(head.all_ports())))
    try:
        cmd = [
            RAY,
            "start",
            "--head",
            *head.start_flags(head=True, temp_dir=root / "h"),
            "--num-cpus=0",
            "--dashboard-host=127.0.0.1",
            "--disable-usage-stats",
        ]
        env = _env(root / "home", token, head, {protocol.LEASE_LABEL: "l-00000000000a"})
        assert procs.spawn(cmd, env=env, log_path=root / "head.log", owner_tag=tag).wait(120) == 0, (
            root / "head.log"
        ).read_text()[-2000:]
        cmd = [
            RAY,
            "start",
            f"--address=127.0.0.1:{head.gcs}",
            *worker.start_flags(head=False, temp_dir=root / "w"),
            "--num-cpus=1",
            "--disable-usage-stats",
        ]
        env = _env(root / "home", token, worker, {protocol.LEASE_LABEL: "l-00000000000b"})
        assert procs.spawn(cmd, env=env, log_path=root / "worker.log", owner_tag=tag).wait(120) == 0, (
            root / "worker.log"
        ).read_text()[-2000:]
        yield head, token
    finally:
        procs.stop_owned(tag, grace_s=5.0)
        shutil.rmtree(root, ignore_errors=True)


async def _alive(head: ray_ports.RayPorts, token: str) -> list[node_observer.ObservedNode]:
    observer = node_observer.NodeObserver()
    try:
        return await observer.alive_nodes("127.0.0.1", head.dashboard, token)
    finally:
        await observer.close()


async def test_observer_lists_alive_nodes_with_lease_labels(bare_cluster):
    head, token = bare_cluster

    async def both_alive():
        return (n := await _alive(head, token)) and len(n) == 2 and n

    nodes = await wait_until(both_alive, timeout_s=60, what="head and worker ALIVE in the head's state API")
    by_lease = {n.lease_id: n for n in nodes}
    assert set(by_lease) == {"l-00000000000a", "l-00000000000b"}
    assert by_lease["l-00000000000a"].is_head and not by_lease["l-00000000000b"].is_head
    assert node_observer.lease_alive(nodes, typed_rows.lease(id="l-00000000000a", role="head"))
    assert node_observer.lease_alive(nodes, typed_rows.lease(id="l-00000000000b", role="worker"))
    assert not node_observer.lease_alive(nodes, typed_rows.lease(id="l-00000000000c", role="worker"))


async def test_observer_needs_the_clusters_token(bare_cluster):
    head, _ = bare_cluster
    with pytest.raises(node_observer.ObserveError, match="HTTP 403"):
        await _alive(head, "0" * 64)
