"""kill -9 of each control-plane actor during provisioning, during teardown, and under heartbeat load."""

from __future__ import annotations

import pytest

from tests.integration.faults import faultkit
from tests.integration.faults.conftest import create_cluster, events_text, wait_event, wait_status
from tests.integration.helpers import Api, wait_for

pytestmark = [pytest.mark.faults, pytest.mark.slow]

SETTLED = ("running", *faultkit.TERMINAL)
CANARY_S = 90


@pytest.mark.parametrize("actor", faultkit.ACTORS)
def test_kill_9_during_provisioning_teardown_and_heartbeats(actor, fault_market, platform):
    buyer = Api.sign_up(platform.url, "buyer")
    seen = []
    with faultkit.HeartbeatLoad(platform.url) as load:
        # 1. While the launcher starts the head of a cluster.
        cid = create_cluster(buyer)
        ids = [cid]
        wait_event(buyer, cid, "node_opened")
        kill = faultkit.kill_actor(platform, actor)
        c = wait_status(buyer, cid, *SETTLED, timeout_s=300)
        seen.append(f"provisioning: back in {kill['back_after_s']} s, cluster {c['status']} {c['reason'] or ''}")
        # A canary that expires after the faults below. Running before the next kill: a ClusterManager restart
        # fails every launch in flight, by design (it cannot resume one safely).
        canary = create_cluster(buyer, duration_s=CANARY_S)
        ids.append(canary)
        if c["status"] != "running":  # a launch cut short is failed with a reason; a new one must work
            cid = create_cluster(buyer)
            ids.append(cid)
            wait_status(buyer, cid, "running", timeout_s=300)
        wait_status(buyer, canary, "running", *faultkit.TERMINAL, timeout_s=300)

        # 2. While its nodes are being released.
        assert buyer.delete(f"/v1/clusters/{cid}").status_code == 200
        wait_event(buyer, cid, "terminating")
        kill = faultkit.kill_actor(platform, actor)
        c = wait_status(buyer, cid, *faultkit.TERMINAL, timeout_s=180)
        seen.append(f"teardown: back in {kill['back_after_s']} s, cluster {c['status']}")
        assert c["status"] == "terminated", events_text(buyer, cid)

        # 3. With clusters running and heartbeats flowing: heartbeats are answered again at once.
        kill = faultkit.kill_actor(platform, actor)
        wait_for(
            lambda: load.answered_since(kill["killed_at"] + kill["back_after_s"]),
            timeout_s=60,
            what="heartbeats answered after the restart",
        )
        seen.append(f"heartbeats: back in {kill['back_after_s']} s")

    assert not load.errors, load.errors[:5]  # a restarting actor is a 503, never a 500
    seen.append(f"heartbeat answers: {dict(load.statuses)}")
    wait_status(buyer, canary, *faultkit.TERMINAL, timeout_s=120)
    lateness = faultkit.expiry_lateness(buyer, canary)
    seen.append(f"canary expired {lateness:.3f} s after its deadline")
    assert 0 <= lateness <= faultkit.EXPIRY_TOLERANCE_S
    faultkit.check_all(platform, buyer, ids)
    print(f"\n{actor}: " + "; ".join(seen))
