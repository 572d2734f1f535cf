"""lifecycle.decide: what one reconcile step does, as plain data (no store, no clock, no Ray)."""

from __future__ import annotations

from actors.clusters import lifecycle
from dcl_core import domain
from tests import typed_rows

S = domain.ClusterStatus
NOW = 10_000.0


def cluster(status=S.PROVISIONING, workers=2, created_at=NOW - 30, expires_at=NOW + 600):
    return typed_rows.cluster(
        id="c-0123456789ab",
        status=status.value,
        created_at=created_at,
        expires_at=expires_at,
        spec={"num_workers": workers, "duration_s": 600},
    )


def lease(lid, role="worker", status="open", joined=True, machine="m-1", opened_at=None):
    return typed_rows.lease(
        id=lid, role=role, status=status, joined_at=NOW - 5 if joined else None, machine_id=machine, opened_at=opened_at
    )


def decide(row, leases, machines=None, **kw):
    machines = {l.machine_id: "online" for l in leases} if machines is None else machines
    return lifecycle.decide(
        row,
        leases,
        machines,
        NOW,
        watch_leases=kw.get("watch", True),
        provision_timeout_s=kw.get("timeout", 600),
        expiry_backstop_s=10,
    )


def test_provisioning_becomes_running_once_head_and_workers_joined():
    leases = [lease("l-h", "head"), lease("l-1"), lease("l-2")]
    (action,) = decide(cluster(), leases)
    assert isinstance(action, lifecycle.Transition) and (action.to, action.from_) == (S.RUNNING, S.PROVISIONING)
    assert "head and 2 worker(s) joined 30.0 s" in action.message
    assert decide(cluster(), leases[:2]) == []  # one worker still joining


def test_provisioning_too_long_fails():
    (action,) = decide(cluster(created_at=NOW - 700), [lease("l-h", "head")])
    assert isinstance(action, lifecycle.Fail) and "0/2 workers joined" in action.reason


def test_a_lost_worker_degrades_and_its_replacement_restores():
    leases = [lease("l-h", "head", machine="m-h"), lease("l-1", machine="m-1"), lease("l-2", machine="m-2")]
    lost, degraded = decide(cluster(S.RUNNING), leases, {"m-h": "online", "m-1": "online", "m-2": "offline"})
    assert lost == lifecycle.LoseLease("l-2", "worker", "machine m-2 is offline")
    assert degraded.to is S.DEGRADED and degraded.reason.startswith("1/2 workers")
    (back,) = decide(cluster(S.DEGRADED), [lease("l-h", "head"), lease("l-1"), lease("l-3")])
    assert back.to is S.RUNNING and back.clear_reason


def test_a_lost_head_fails_the_cluster_and_ends_the_step():
    leases = [lease("l-h", "head", machine="m-h"), lease("l-1", machine="m-1")]
    (action,) = decide(cluster(S.RUNNING), leases, {"m-1": "online"})  # m-h unknown
    assert action.why == "machine m-h is unknown" and action.fail_reason == f"the head node l-h was lost: {action.why}"


def test_a_lease_its_agent_no_longer_holds_is_lost_after_the_margin():
    old = lease("l-1", opened_at=NOW - 100)
    leases = [lease("l-h", "head", machine="m-h", opened_at=NOW - 100), old]
    held = {"m-h": {"at": NOW, "leases": ["l-h"]}, "m-1": {"at": NOW, "leases": []}}
    lost, degraded = lifecycle.decide(
        cluster(S.RUNNING, workers=1),
        leases,
        {"m-h": "online", "m-1": "online"},
        NOW,
        watch_leases=True,
        provision_timeout_s=600,
        expiry_backstop_s=10,
        held=held,
    )
    assert lost.lease_id == "l-1" and "no longer runs it" in lost.why and degraded.to is S.DEGRADED
    # Opened after the heartbeat was sent (within the margin): not lost yet.
    young = lease("l-1", opened_at=NOW - lifecycle.HELD_MARGIN_S + 1)
    assert (
        lifecycle.decide(
            cluster(S.RUNNING, workers=1),
            [leases[0], young],
            {"m-h": "online", "m-1": "online"},
            NOW,
            watch_leases=True,
            provision_timeout_s=600,
            expiry_backstop_s=10,
            held=held,
        )
        == []
    )


def test_expiry_backstop_and_backends_without_leases():
    assert decide(cluster(expires_at=NOW - 10), []) == [lifecycle.Expire(NOW - 10)]
    assert decide(cluster(expires_at=NOW - 9), [lease("l-h", "head")], {}, watch=False) == []
    # Closed or lost leases are never "lost" again and never count as joined.
    assert (
        decide(
            cluster(S.RUNNING, workers=1),
            [lease("l-h", "head"), lease("l-1"), lease("l-0", status="closed")],
            {"m-1": "online"},
        )
        == []
    )
