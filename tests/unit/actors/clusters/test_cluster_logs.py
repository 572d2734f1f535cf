"""Logs that outlive the cluster: untrusted entries checked, the per-cluster cap, listing, retention."""

import pytest

from actors.access import auth
from actors.clusters import cluster_logs
from actors.db import store
from actors.settings import PlatformSettings
from dcl_core import domain, errors
from dcl_core.cluster_spec import ClusterSpec
from tests.unit.actors.clusters.test_cluster_manager import FakeRegistry, build_manager, seed_market, settle

pytestmark = pytest.mark.anyio


def test_malformed_entries_are_dropped():
    shipped = [
        {"name": "ray/raylet.out", "text": "ok"},
        {"name": "../../etc/passwd", "text": "x"},
        {"name": "ray/a b", "text": "x"},
        {"name": "ray/x.log", "text": 5},
        "junk",
        {"name": "commands/0001-run.log", "text": "y", "bytes": -3},
    ]
    assert [(f["name"], f["bytes"]) for f in cluster_logs.valid_files(shipped)] == [
        ("ray/raylet.out", 2),
        ("commands/0001-run.log", 1),
    ]
    assert cluster_logs.valid_files({"name": "ray/x"}) == []


def test_fit_keeps_tails_within_the_budget():
    files = [
        {"name": "ray/a", "text": "a" * 10, "truncated": False, "bytes": 10},
        {"name": "ray/b", "text": "0123456789", "truncated": False, "bytes": 10},
        {"name": "ray/c", "text": "c", "truncated": False, "bytes": 1},
    ]
    kept = cluster_logs.fit(files, 15)
    assert [(f["name"], f["text"], f["truncated"]) for f in kept] == [
        ("ray/a", "a" * 10, False),
        ("ray/b", "56789", True),
    ]


class LogsRegistry(FakeRegistry):
    """A healthy agent whose lease close ships logs (one over-long file, one forged name)."""

    async def answer(self, machine_id, kind, payload, timeout_s):
        result = await super().answer(machine_id, kind, payload, timeout_s)
        if kind == "lease_close":
            result["data"] = {
                "logs": [
                    {
                        "name": "ray/job-driver-raysubmit_1.log",
                        "text": f"driver of {payload['lease_id']}\n",
                        "bytes": 20,
                    },
                    {"name": "ray/raylet.out", "text": "r" * 3000, "bytes": 3000},
                    {"name": "/etc/shadow", "text": "forged"},
                ]
            }
        return result


async def test_released_nodes_logs_are_kept_capped_listed_then_purged(tmp_path, clock, closing):
    settings = PlatformSettings(
        state_dir=tmp_path,
        heartbeat_interval_s=5,
        api_url="http://127.0.0.1:9",
        cluster_logs_max_bytes=4000,
        cluster_logs_retention_s=3600,
    )
    db = store.Store(settings.db_path)
    closing.push_async_callback(db.close)
    buyer = await seed_market(db, clock)
    other = await db.create_account("other", "h", domain.Role.BUYER, clock())
    manager, _, manager_store = build_manager(settings, LogsRegistry(clock, settings.offline_after_s), clock)
    closing.push_async_callback(manager_store.close)
    await manager.start()
    me = auth.Principal(buyer["id"], "buyer", domain.Role.BUYER)
    c = await manager.create_cluster(me, ClusterSpec(num_workers=1, duration_s=600))
    await settle(manager)
    assert await manager.cluster_logs(me, c["id"]) == []  # nothing until nodes are released
    with pytest.raises(errors.NotFound, match="while it runs"):
        await manager.cluster_log(me, c["id"], "ray/job-driver-raysubmit_1.log")
    await manager.delete_cluster(me, c["id"])
    await settle(manager)
    files = await manager.cluster_logs(me, c["id"])
    assert all(f["name"] != "/etc/shadow" for f in files)
    assert sum(f["kept_bytes"] for f in files) <= 4000  # the cluster's cap, over both nodes
    assert any(f["truncated"] for f in files)
    driver = await manager.cluster_log(me, c["id"], "ray/job-driver-raysubmit_1.log")
    assert driver["text"].startswith("driver of l-")
    truncated = next(f for f in files if f["truncated"])
    text = (await manager.cluster_log(me, c["id"], truncated["name"], truncated["lease_id"]))["text"]
    assert text.startswith("[dcluster: earlier lines were left out")
    kinds = [e["kind"] for e in await manager.cluster_events(me, c["id"])]
    assert "logs_kept" in kinds
    stranger = auth.Principal(other["id"], "other", domain.Role.BUYER)
    with pytest.raises(errors.NotFound):
        await manager.cluster_logs(stranger, c["id"])
    clock.advance(3601)
    await manager.sweep()
    assert await manager.cluster_logs(me, c["id"]) == []  # past the retention
