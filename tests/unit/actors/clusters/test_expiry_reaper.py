"""ExpiryReaper with a fake clock: exact deadlines, extend, delete, restart, no double teardown."""

import asyncio

from actors.clusters import cluster_manager, expiry_reaper
from actors.db import cluster_store, store
from dcl_core import domain
from tests.protocols import assert_implements


class FakeClusters:
    def __init__(self, db, clock):
        self.db, self.clock = db, clock
        self.expired, self.warned = [], []

    async def expire(self, cluster_id: str, deadline: float) -> bool:
        ok = await self.db.set_cluster_status(
            cluster_id, domain.ClusterStatus.TERMINATING, self.clock(), only_from=domain.ClusterStatus.active()
        )
        if ok:
            self.expired.append((cluster_id, self.clock() - deadline))
        return ok

    async def warn_expiry(self, cluster_id: str, deadline: float) -> None:
        self.warned.append(cluster_id)


def test_fake_clusters_implements_what_the_reaper_needs_of_the_manager():
    assert_implements(expiry_reaper.Clusters, FakeClusters, cluster_manager.ClusterManager)


async def make(tmp_path, clock, n=5, **options):
    accounts = store.Store(tmp_path / "p.db")
    acct = await accounts.create_account("b", "h", domain.Role.BUYER, clock())
    await accounts.close()
    db = cluster_store.ClusterStore(tmp_path / "p.db")
    for i in range(n):
        await db.create_cluster(
            cluster={
                "id": f"c-00000000000{i}",
                "owner_id": acct["id"],
                "name": "x",
                "spec": "{}",
                "status": "running",
                "expires_at": clock() + 100 * (i + 1),
            },
            leases=[],
            event="created",
            now=clock(),
        )
    clusters = FakeClusters(db, clock)
    reaper = expiry_reaper.ExpiryReaper(db, clusters=clusters, clock=clock, **options)
    await reaper.start()
    return db, clusters, reaper


def test_each_deadline_fires_exactly_once_on_time(tmp_path, clock):
    async def go():
        db, clusters, reaper = await make(tmp_path, clock)
        assert reaper.next_deadline() == clock() + 90  # the first warning, 10 s before 100
        clock.advance(99.9)
        assert await reaper.fire_due() == [] and clusters.warned == ["c-000000000000"]
        clock.advance(0.1)
        assert await reaper.fire_due() == ["c-000000000000"]
        clock.advance(1000)
        assert sorted(await reaper.fire_due()) == [f"c-00000000000{i}" for i in range(1, 5)]
        assert await reaper.fire_due() == []
        assert len(clusters.expired) == 5
        await db.close()

    asyncio.run(go())


def test_extend_moves_and_delete_cancels(tmp_path, clock):
    async def go():
        db, clusters, reaper = await make(tmp_path, clock, n=2)
        await db.set_expiry("c-000000000000", clock() + 500, clock())
        await reaper.schedule("c-000000000000")
        await db.set_cluster_status("c-000000000001", domain.ClusterStatus.TERMINATED, clock())
        clock.advance(300)
        assert await reaper.fire_due() == []  # old deadline 100 is stale; 200 was deleted
        clock.advance(200)
        assert await reaper.fire_due() == ["c-000000000000"]
        await db.close()

    asyncio.run(go())


def test_restart_acts_on_missed_deadlines_once(tmp_path, clock):
    async def go():
        db, clusters, reaper = await make(tmp_path, clock, n=2)
        clock.advance(150)  # the platform was down over the first deadline
        again = expiry_reaper.ExpiryReaper(db, clusters=clusters, clock=clock)
        await again.start()
        assert await again.fire_due() == ["c-000000000000"]
        assert await reaper.fire_due() == []  # the old instance's entry finds it ended: no second teardown
        assert [c for c, _ in clusters.expired] == ["c-000000000000"]
        await db.close()

    asyncio.run(go())


def test_loop_sleeps_until_the_deadline(tmp_path):
    import time

    async def go():
        db, clusters, reaper = await make(tmp_path, time.time, n=0)
        task = asyncio.create_task(reaper.run_deadline_loop())
        await db.create_cluster(
            cluster={
                "id": "c-00000000000a",
                "owner_id": 1,
                "name": "x",
                "spec": "{}",
                "status": "running",
                "expires_at": time.time() + 0.3,
            },
            leases=[],
            event="created",
            now=time.time(),
        )
        await reaper.schedule("c-00000000000a")
        for _ in range(100):
            if clusters.expired:
                break
            await asyncio.sleep(0.02)
        task.cancel()
        await db.close()
        return clusters.expired

    (expired,) = asyncio.run(go())
    assert expired[0] == "c-00000000000a" and 0 <= expired[1] < 0.1
