"""ExpiryReaper with a fake clock: exact deadlines, extend, delete, restart, no double teardown."""

import asyncio

import pytest

from actors.clusters import cluster_manager, expiry_reaper
from actors.db import cluster_store, store
from dcl_core import domain
from dcl_core.cluster_spec import ClusterSpec
from tests.protocols import assert_implements

pytestmark = pytest.mark.anyio


class FakeClusters:
    def __init__(self, db, clock):
        self.db, self.clock = db, clock
        self.expired, self.warned = [], []
        self.expiring = asyncio.Event()  # set at each expiry

    async def expire(self, cluster_id: str, deadline: float) -> bool:
        ok = await self.db.set_cluster_status(
            cluster_id, domain.ClusterStatus.TERMINATING, self.clock(), only_from=domain.ClusterStatus.active()
        )
        if ok:
            self.expired.append((cluster_id, self.clock() - deadline))
            self.expiring.set()
        return ok

    async def warn_expiry(self, cluster_id: str, deadline: float) -> None:
        self.warned.append(cluster_id)


def test_fake_clusters_implements_what_the_reaper_needs_of_the_manager():
    assert_implements(expiry_reaper.Clusters, FakeClusters, cluster_manager.ClusterManager)


@pytest.fixture
async def cluster_db(tmp_path, clock):
    """The reaper's store, with one buyer (account 1) to own the clusters; closed after the test."""
    accounts = store.Store(tmp_path / "p.db")
    try:
        await accounts.create_account("b", "h", domain.Role.BUYER, clock())
    finally:
        await accounts.close()
    db = cluster_store.ClusterStore(tmp_path / "p.db")
    yield db
    await db.close()


async def add_cluster(db, clock, cluster_id: str, expires_at: float) -> None:
    await db.create_cluster(
        cluster={
            "id": cluster_id,
            "owner_id": 1,
            "name": "x",
            "spec": ClusterSpec(num_workers=1, duration_s=600).model_dump_json(),
            "status": "running",
            "expires_at": expires_at,
        },
        leases=[],
        event="created",
        now=clock(),
    )


async def make(db, clock, n=5, **options):
    """n running clusters due 100 s apart, and a started reaper over them."""
    for i in range(n):
        await add_cluster(db, clock, f"c-00000000000{i}", clock() + 100 * (i + 1))
    clusters = FakeClusters(db, clock)
    reaper = expiry_reaper.ExpiryReaper(db, clusters=clusters, clock=clock, **options)
    await reaper.start()
    return clusters, reaper


async def test_each_deadline_fires_exactly_once_on_time(cluster_db, clock):
    clusters, reaper = await make(cluster_db, clock)
    assert reaper.next_deadline() == clock() + 90  # the first warning, 10 s before 100
    clock.advance(99.9)
    assert await reaper.fire_due() == [] and clusters.warned == ["c-000000000000"]
    clock.advance(0.1)
    assert await reaper.fire_due() == ["c-000000000000"]
    clock.advance(1000)
    assert sorted(await reaper.fire_due()) == [f"c-00000000000{i}" for i in range(1, 5)]
    assert await reaper.fire_due() == []
    assert len(clusters.expired) == 5


async def test_extend_moves_and_delete_cancels(cluster_db, clock):
    db = cluster_db
    clusters, reaper = await make(db, clock, n=2)
    await db.set_expiry("c-000000000000", clock() + 500, clock())
    await reaper.schedule("c-000000000000")
    await db.set_cluster_status("c-000000000001", domain.ClusterStatus.TERMINATED, clock())
    clock.advance(300)
    assert await reaper.fire_due() == []  # old deadline 100 is stale; 200 was deleted
    clock.advance(200)
    assert await reaper.fire_due() == ["c-000000000000"]


async def test_restart_acts_on_missed_deadlines_once(cluster_db, clock):
    clusters, reaper = await make(cluster_db, clock, n=2)
    clock.advance(150)  # the platform was down over the first deadline
    again = expiry_reaper.ExpiryReaper(cluster_db, clusters=clusters, clock=clock)
    await again.start()
    assert await again.fire_due() == ["c-000000000000"]
    assert await reaper.fire_due() == []  # the old instance's entry finds it ended: no second teardown
    assert [c for c, _ in clusters.expired] == ["c-000000000000"]


async def test_loop_sleeps_until_the_deadline(cluster_db, clock):
    """Woken by a schedule, the loop sleeps exactly until each next entry (the fake sleep moves the fake
    clock): the owner's warning, then the deadline, where the cluster is torn down on time."""
    slept = []

    async def sleep(seconds):
        slept.append(seconds)
        clock.advance(seconds)
        await asyncio.sleep(0)

    clusters, reaper = await make(cluster_db, clock, n=0, sleep=sleep)
    task = asyncio.create_task(reaper.run_deadline_loop())
    try:
        await asyncio.sleep(0)  # nothing to wait for: the loop waits for a schedule, with no timeout
        assert slept == []
        await add_cluster(cluster_db, clock, "c-00000000000a", clock() + 100)
        await reaper.schedule("c-00000000000a")
        await asyncio.wait_for(clusters.expiring.wait(), 5)
    finally:
        task.cancel()
    assert clusters.warned == ["c-00000000000a"] and clusters.expired == [("c-00000000000a", 0.0)]
    assert slept == [90, 10]  # to the warning, then to the deadline
