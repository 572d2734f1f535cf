"""The API replica answers cluster reads from the database itself once it reaches it (no ClusterManager hop),
with exactly the ClusterManager's answer: the owner's cluster, a 404 for anyone else; until then, through the
manager. On SQLite and on PostgreSQL."""

from __future__ import annotations

import pytest

from actors.access import auth
from dcl_core import domain, errors
from dcl_core.cluster_spec import ClusterSpec
from serve_app import app as app_mod
from tests.unit.actors.clusters.test_cluster_manager import env, settle  # noqa: F401 - `env` is a fixture

pytestmark = pytest.mark.anyio


class CountingClusters:
    """The ClusterManager's handle, counting the reads that reach it."""

    def __init__(self, manager):
        self.manager, self.calls = manager, 0
        outer = self

        class _Method:
            @staticmethod
            def remote(reads):
                outer.calls += 1
                return outer.manager.get_clusters(reads)

        self.get_clusters = _Method()


async def test_reads_come_from_the_database_once_the_replica_reaches_it(env):
    e = await env()
    c = await e.manager.create_cluster(e.buyer, ClusterSpec(num_workers=1, duration_s=600))
    await settle(e.manager)
    other = auth.Principal(e.buyer.account_id + 100, "mallory", domain.Role.BUYER)
    clusters, reachable = CountingClusters(e.manager), []
    app = app_mod.create_app(None, clusters, cluster_db=lambda: e.store if reachable else None)
    reads = app.state.cluster_reads
    through_manager = await reads((e.buyer, c["id"]))
    assert clusters.calls == 1
    reachable.append(True)
    here = await reads((e.buyer, c["id"]))
    assert clusters.calls == 1 and here == through_manager == await e.manager.get_cluster(e.buyer, c["id"])
    with pytest.raises(errors.NotFound):
        await reads((other, c["id"]))
    with pytest.raises(errors.NotFound):
        await reads((e.buyer, "c-000000000000"))
