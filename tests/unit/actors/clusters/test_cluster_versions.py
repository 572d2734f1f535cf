"""A cluster runs one Ray version (the platform's, or one it launches that the buyer asked for) and one Python
minor version: its nodes go only to machines whose leases run both, its view says which, and its later nodes
(replacements) follow."""

from __future__ import annotations

import pytest

from actors.access import auth
from actors.settings import launchable_ray_versions
from dcl_core import domain, errors, protocol
from dcl_core.cluster_spec import ClusterSpec
from tests import lease_versions
from tests.unit.actors.clusters.test_cluster_manager import add_machine, env, settle  # noqa: F401 (the fixture)

pytestmark = pytest.mark.anyio

OTHER_PYTHON = "3.99"  # no machine of the seeded market runs it


async def test_a_cluster_runs_the_platform_s_ray_and_its_view_says_which(env):
    manager, _, _, buyer, _ = await env()
    c = await manager.create_cluster(buyer, ClusterSpec(num_workers=1, duration_s=600))
    here = domain.python_minor(lease_versions.PYTHON)
    assert (c["ray_version"], c["python_version"]) == (lease_versions.RAY, here)
    assert launchable_ray_versions() == (lease_versions.RAY,)
    asked = await manager.create_cluster(
        buyer, ClusterSpec(num_workers=1, duration_s=600, ray_version=lease_versions.RAY)
    )
    assert (asked["ray_version"], asked["python_version"]) == (lease_versions.RAY, here)


async def test_a_ray_version_the_platform_cannot_launch_is_400_naming_those_it_can(env):
    manager, _, _, buyer, _ = await env()
    with pytest.raises(errors.InvalidInput) as exc:
        await manager.create_cluster(buyer, ClusterSpec(num_workers=1, duration_s=600, ray_version="2.9.3"))
    assert exc.value.http_status == 400
    assert (
        f"ray_version 2.9.3 cannot be launched here: this platform launches clusters of Ray {lease_versions.RAY}"
        in (str(exc.value))
    )
    assert await manager.list_clusters(buyer) == []


async def test_nodes_never_go_where_another_ray_runs_even_when_cheaper(env, clock):
    manager, _, _, buyer, db = await env()
    await add_machine(db, clock, "m-oldray000000", cpus=8, ray="2.9.3", price_per_cpu_hour=0)
    c = await manager.create_cluster(buyer, ClusterSpec(num_workers=2, cpus_per_worker=2, duration_s=600))
    assert {n["machine_id"] for n in c["nodes"]} == {"m-000000000000", "m-000000000001"}


async def test_a_cluster_takes_one_python_and_its_replacements_follow_it(env, clock):
    manager, registry, _, buyer, db = await env()
    # Cheaper, with room for a whole cluster: the cheapest placement is all of it there, never half.
    await add_machine(db, clock, "m-otherpy00000", cpus=8, python="3.99.1", price_per_cpu_hour=0)
    c = await manager.create_cluster(buyer, ClusterSpec(num_workers=2, cpus_per_worker=2, duration_s=600))
    assert {n["machine_id"] for n in c["nodes"]} == {"m-otherpy00000"} and c["python_version"] == OTHER_PYTHON
    # Five 2-CPU workers fit neither the 3.99 machine (8 CPUs) nor the two others (4 each) alone: all 16 together
    # would hold them, but a cluster never spans two Pythons.
    with pytest.raises(errors.Conflict, match="not enough capacity"):
        await manager.create_cluster(buyer, ClusterSpec(num_workers=5, cpus_per_worker=2, duration_s=600))
    await settle(manager)
    await manager.reconcile_once()
    # Its only machine fails to open anything now: a replacement must not go where another Python runs.
    registry.fail_opens_on = {"m-otherpy00000"}
    principal = auth.Principal(buyer.account_id, "cluster-" + c["id"], domain.Role.BUYER, cluster_id=c["id"])
    worker = next(n for n in (await manager.get_cluster(buyer, c["id"]))["nodes"] if n["role"] == "worker")
    await manager.terminate_node(principal, c["id"], worker["id"])
    with pytest.raises(errors.Conflict):
        await manager.create_nodes(principal, c["id"], "worker", "worker", {}, 1)
    opened_on = {m for m, kind, _ in registry.sent if kind == protocol.LEASE_OPEN}
    assert opened_on == {"m-otherpy00000"}


async def test_no_machine_of_the_asked_python_is_the_usual_409_naming_it(env):
    manager, _, _, buyer, _ = await env()
    with pytest.raises(errors.Conflict) as exc:
        await manager.create_cluster(buyer, ClusterSpec(num_workers=1, duration_s=600, python_version="3.98"))
    message = str(exc.value)
    assert message.startswith("not enough capacity")
    assert f"here Ray {lease_versions.RAY} on Python 3.98: 0 of the 2 machine(s) run it" in message
