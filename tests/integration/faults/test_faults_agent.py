"""An agent killed with -9 and started again (same state dir) while it holds leases."""

from __future__ import annotations

import time

import pytest

from tests.integration.faults import faultkit
from tests.integration.faults.conftest import create_cluster, events_text, wait_status
from tests.integration.helpers import Api, wait_for

pytestmark = [pytest.mark.faults, pytest.mark.slow]


def test_agent_restart_while_it_holds_leases(fault_market, platform):
    buyer = Api.sign_up(platform.url, "buyer")
    cid = create_cluster(buyer)
    c = wait_status(buyer, cid, "running", timeout_s=300)
    head = next(n for n in c["nodes"] if n["role"] == "head" and n["status"] == "open")
    victim = next(m for m in fault_market if m["id"] == head["machine_id"])

    victim["agent"].kill9()
    # The leases' Ray processes outlive the agent (bwrap: the sandbox hangs off a keeper of its own; unsandboxed:
    # they carry their own owner tags), and the restarted agent reattaches them if it is back within the
    # platform's silence window. Either way the platform must end up right, which is what is checked below.
    head_outlived_agent = bool(faultkit.lease_process_tags().get(faultkit.LEASE_TAG_PREFIX + head["id"]))
    restarted_at = time.time()
    victim["agent"].start()
    wait_for(
        lambda: victim["provider"].get(f"/v1/machines/{victim['id']}").json()["last_heartbeat"] > restarted_at,
        timeout_s=90,
        what="the restarted agent heartbeats",
    )
    canary = create_cluster(buyer, duration_s=60)  # expires after the fault

    # The restarted agent cleans up what its previous run left (or keeps it): either way the platform must
    # not show a "running" cluster whose head is gone; it ends it with a reason, or its nodes still run.
    def settled():
        c = buyer.get(f"/v1/clusters/{cid}").json()
        if c["status"] in faultkit.TERMINAL:
            return c
        faultkit.check_running_nodes_alive(platform.state_dir, {cid: c})
        return c["status"] == "running" and c

    try:
        c = wait_for(settled, timeout_s=120, interval_s=1, what="the cluster running with live nodes, or ended")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{events_text(buyer, cid)}") from None
    seen = f"cluster {c['status']}: {c['reason']} (head outlived the agent: {head_outlived_agent})"
    wait_status(buyer, canary, *faultkit.TERMINAL, timeout_s=180)
    lateness = faultkit.expiry_lateness(buyer, canary)
    assert 0 <= lateness <= faultkit.EXPIRY_TOLERANCE_S
    buyer.delete(f"/v1/clusters/{cid}")
    wait_status(buyer, cid, *faultkit.TERMINAL, timeout_s=180)
    faultkit.check_all(platform, buyer, [canary, cid])
    print(f"\nagent restart: {seen}; canary expired {lateness:.3f} s late\n{events_text(buyer, cid)}")
