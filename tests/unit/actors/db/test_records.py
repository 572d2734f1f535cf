"""actors.db.records: what the cluster store's reads hand their callers, decoded once from real rows (SQLite)."""

import asyncio
import pickle

from actors.db import cluster_store, records, store
from dcl_core import domain
from dcl_core.cluster_spec import ClusterSpec

CID = "c-0123456789ab"
SPEC = ClusterSpec(num_workers=1, gpus_per_worker=1, duration_s=600, max_price_per_gpu_hour=2.5)


async def _stored(path) -> cluster_store.ClusterStore:
    """A cluster with a head (reserved) and a worker (opened) on one provider's machine."""
    machines = store.Store(path)
    provider = await machines.create_account("prov", "h", domain.Role.PROVIDER, 1.0)
    buyer = await machines.create_account("buyer", "h", domain.Role.BUYER, 1.0)
    gpus = [domain.GpuInfo(index=i, model="NVIDIA T4", memory_mb=16000) for i in range(2)]
    await machines.upsert_machine(
        machine_id="m-aaaaaaaaaaaa",
        provider_id=provider["id"],
        machine_key="key-00001",
        name="one",
        spec=domain.MachineSpec(hostname="h", cpus=8, memory_mb=16000, gpus=gpus),
        price_per_gpu_hour=1.0,
        price_per_cpu_hour=0.1,
        now=2.0,
    )
    await machines.close()
    clusters = cluster_store.ClusterStore(path)
    lease = {"machine_id": "m-aaaaaaaaaaaa", "cpus": 1, "price_per_gpu_hour": 1.0, "price_per_cpu_hour": 0.1}
    await clusters.create_cluster(
        cluster={
            "id": CID,
            "owner_id": buyer["id"],
            "name": "demo",
            "spec": SPEC.model_dump_json(),
            "status": domain.ClusterStatus.PROVISIONING.value,
            "expires_at": 603.0,
        },
        leases=[
            {**lease, "id": "l-00000000000h", "role": "head", "gpus": []},
            {**lease, "id": "l-00000000000w", "role": "worker", "gpus": [1]},
        ],
        event="created",
        now=3.0,
    )
    ports = {"gcs": 6379, "dashboard": 8265}
    await clusters.open_lease(
        "l-00000000000w", node_type="worker", tags={"k": "v"}, ports=ports, node_ip="10.0.0.2", now=4.0
    )
    return clusters


def test_a_cluster_and_its_leases_are_read_as_records(tmp_path):
    async def go():
        clusters = await _stored(tmp_path / "platform.db")
        try:
            return (
                await clusters.get_cluster(CID),
                await clusters.get_clusters([CID, "c-000000000000"]),
                await clusters.list_clusters(),
                await clusters.clusters_with_status(domain.ClusterStatus.PROVISIONING),
                await clusters.live_clusters_of(1) + await clusters.live_clusters_of(2),
                await clusters.leases_of(CID),
                await clusters.leases_of_clusters([CID]),
                await clusters.get_lease("l-00000000000w"),
                await clusters.get_cluster("c-000000000000"),
            )
        finally:
            await clusters.close()

    cluster, by_id, listed, provisioning, live, leases, leases_by_cluster, worker, missing = asyncio.run(go())
    assert isinstance(cluster, records.Cluster) and cluster.spec == SPEC  # the spec JSON, parsed once
    assert cluster.status is domain.ClusterStatus.PROVISIONING and cluster.ending_as is None
    assert (cluster.name, cluster.created_at, cluster.expires_at) == ("demo", 3.0, 603.0)
    assert by_id == {CID: cluster} and listed == provisioning == live == [cluster] and missing is None
    head, opened = leases
    assert leases_by_cluster == {CID: leases} and opened == worker
    assert head.role is domain.NodeRole.HEAD and head.status is domain.LeaseStatus.RESERVED and head.ports is None
    assert worker.role is domain.NodeRole.WORKER and worker.is_open and not worker.joined
    assert worker.gpus == (1,) and worker.tags == {"k": "v"} and worker.ports == {"gcs": 6379, "dashboard": 8265}
    assert (worker.node_type, worker.node_ip, worker.opened_at) == ("worker", "10.0.0.2", 4.0)
    # Records cross actor boundaries: Ray pickles them.
    assert pickle.loads(pickle.dumps((cluster, worker))) == (cluster, worker)
