"""The ClusterManager's statements (SQLAlchemy Core), built once: building and keying a statement costs tens of µs
a call, which the placement, heartbeat and cluster-read paths would pay every time."""

from __future__ import annotations

import json

import sqlalchemy as sa

from actors.db import database
from actors.db import store as store_mod
from actors.db.database import Row
from actors.db.schema import account_quotas, accounts, cluster_events, clusters, leases, machines
from dcl_core import domain

IDS_PER_QUERY = 500  # ids in one `IN (...)` (SQLite's limit on parameters was 999 before 3.32)
HELD_BY_CHECKS = tuple(s.value for s in domain.GpuVerification.placement_holders())


def lease_values(cluster_id: str, lease: Row, now: float) -> Row:
    # Prices are copied at reservation: a provider changing its price does not re-bill running leases.
    return {
        "id": lease["id"],
        "cluster_id": cluster_id,
        "machine_id": lease["machine_id"],
        "role": lease["role"],
        "gpus": json.dumps(lease["gpus"]),
        "cpus": lease["cpus"],
        "price_per_gpu_hour": lease.get("price_per_gpu_hour", 0.0),
        "price_per_cpu_hour": lease.get("price_per_cpu_hour", 0.0),
        "status": domain.LeaseStatus.RESERVED.value,
        "created_at": now,
    }


def leases_by_cluster(cluster_ids: list[str], rows: list[Row]) -> dict[str, list[Row]]:
    """Lease rows decoded, under their cluster's id (each of cluster_ids, with none or more)."""
    found: dict[str, list[Row]] = {cid: [] for cid in cluster_ids}
    for r in rows:
        found[r["cluster_id"]].append(decode_lease(r))
    return found


def decode_lease(row: Row) -> Row:
    """A leases row with its JSON columns (gpus, tags, ports) decoded: what lease_values encoded."""
    lease = dict(row)
    lease["gpus"] = json.loads(row["gpus"])
    lease["tags"] = json.loads(row["tags"] or "{}")
    lease["ports"] = json.loads(row["ports"]) if row["ports"] else None
    return lease


# What placement reads of a machine (not the spec JSON: it runs over many machines).
PLACEMENT_MACHINE = sa.select(
    machines.c.id,
    machines.c.gpu_model,
    machines.c.gpus,
    machines.c.cpus,
    machines.c.price_per_gpu_hour,
    machines.c.price_per_cpu_hour,
    machines.c.registered_at,
    machines.c.online_seconds,
    machines.c.leases_completed,
    machines.c.leases_lost,
    machines.c.gpu_check,
    machines.c.ray_version,
    machines.c.python_version,
    accounts.c.username.label("provider"),
).join_from(machines, accounts, accounts.c.id == machines.c.provider_id)
# The reads of a cluster and its leases are on the fast path (database.prepared): the API answers every
# GET /v1/clusters/{id} with them.
CLUSTER_BY_ID = database.prepared(sa.select(clusters).where(clusters.c.id == sa.bindparam("cluster_id")))
CLUSTERS_BY_IDS = database.prepared(sa.select(clusters).where(clusters.c.id.in_(sa.bindparam("ids", expanding=True))))
LEASES_OF_CLUSTERS = database.prepared(
    sa.select(leases)
    .where(leases.c.cluster_id.in_(sa.bindparam("ids", expanding=True)))
    .order_by(leases.c.created_at, leases.c.id)
)
ACTIVE = leases.c.status.in_(store_mod.ACTIVE_LEASE_STATUSES)
INSERT_LEASE = leases.insert()
LEASES_OF = database.prepared(
    sa.select(leases)
    .where(leases.c.cluster_id == sa.bindparam("cluster_id"))
    .order_by(leases.c.created_at, leases.c.id)
)
LEASE_BY_ID = sa.select(leases).where(leases.c.id == sa.bindparam("lease_id"))
ACTIVE_LEASES = sa.select(leases).where(ACTIVE)
ACTIVE_LEASE_IDS = sa.select(leases.c.id).where(ACTIVE)
LEASE_HOLDINGS = sa.select(leases.c.id, leases.c.machine_id, leases.c.cluster_id, leases.c.gpus, leases.c.cpus).where(
    leases.c.id.in_(sa.bindparam("ids", expanding=True))
)
EVENTS = (
    sa.select(cluster_events.c.id, cluster_events.c.ts, cluster_events.c.kind, cluster_events.c.message)
    .where(cluster_events.c.cluster_id == sa.bindparam("cluster_id"), cluster_events.c.id > sa.bindparam("after_id"))
    .order_by(cluster_events.c.id)
)
INSERT_EVENT = cluster_events.insert()
INSERT_CLUSTER = clusters.insert()
ONLINE_MACHINES = PLACEMENT_MACHINE.where(
    store_mod.online(), sa.or_(machines.c.gpu_check.is_(None), machines.c.gpu_check.not_in(HELD_BY_CHECKS))
)
CHANGED_MACHINES = PLACEMENT_MACHINE.where(machines.c.changed_at >= sa.bindparam("since"))
UNPLACEABLE_IDS = sa.union_all(
    *store_mod.not_online_ids(), sa.select(machines.c.id).where(machines.c.gpu_check.in_(HELD_BY_CHECKS))
)
MACHINE_STATUSES = sa.select(machines.c.id, machines.c.status, machines.c.last_heartbeat).where(
    machines.c.id.in_(sa.bindparam("ids", expanding=True))
)
OPEN_LEASE = (
    sa.update(leases)
    .where(leases.c.id == sa.bindparam("lease_id"), leases.c.status == domain.LeaseStatus.RESERVED.value)
    .values(
        status=domain.LeaseStatus.OPEN.value,
        node_type=sa.bindparam("node_type_"),
        tags=sa.bindparam("tags_"),
        ports=sa.bindparam("ports_"),
        node_ip=sa.bindparam("node_ip_"),
        opened_at=sa.bindparam("now"),
    )
)
ACCOUNT = sa.select(accounts.c.id, accounts.c.username, accounts.c.role).where(
    accounts.c.id == sa.bindparam("account_id")
)
LIVE_CLUSTERS_OF = sa.select(clusters).where(
    clusters.c.owner_id == sa.bindparam("owner_id"),
    clusters.c.status.in_([s.value for s in domain.ClusterStatus.active()]),
)
QUOTA_OVERRIDES = sa.select(account_quotas).where(account_quotas.c.account_id == sa.bindparam("account_id"))
MARK_JOINED = (
    sa.update(leases)
    .where(leases.c.id == sa.bindparam("lease_id"), leases.c.joined_at.is_(None))
    .values(joined_at=sa.bindparam("now"))
)

# GPU checks (actors.machines.gpu_checks): the verification columns of machines.
_CHECKING = domain.GpuVerification.CHECKING.value
_PENDING = domain.GpuVerification.PENDING.value
DUE_GPU_CHECKS = sa.select(machines.c.id, machines.c.spec).where(
    machines.c.gpu_check == _PENDING,
    store_mod.online(),
    ~sa.select(leases.c.id).where(leases.c.machine_id == machines.c.id, ACTIVE).exists(),
)
BEGIN_GPU_CHECK = (
    sa.update(machines)
    .where(machines.c.id == sa.bindparam("machine_id"), machines.c.gpu_check == _PENDING)
    .values(gpu_check=_CHECKING, gpu_check_lease=sa.bindparam("lease_id"))
)
FINISH_GPU_CHECK = (
    sa.update(machines)
    .where(
        machines.c.id == sa.bindparam("machine_id"),
        machines.c.gpu_check == _CHECKING,
        machines.c.gpu_check_lease == sa.bindparam("lease_id"),
    )
    .values(
        gpu_check=sa.bindparam("outcome"),
        gpu_check_detail=sa.bindparam("detail"),
        gpu_checked_at=sa.bindparam("now"),
        gpu_check_lease=None,
        changed_at=sa.bindparam("now"),
    )
)
RESTART_GPU_CHECKS = (
    sa.update(machines)
    .where(machines.c.gpu_check == _CHECKING, machines.c.id.not_in(sa.bindparam("running", expanding=True)))
    .values(gpu_check=_PENDING, gpu_check_lease=None)
)
UNASSESSED_MACHINES = sa.select(machines.c.id, machines.c.spec).where(machines.c.gpu_check.is_(None))
ASSESS_MACHINE = (
    sa.update(machines)
    .where(machines.c.id == sa.bindparam("machine_id"), machines.c.gpu_check.is_(None))
    .values(gpu_check=sa.bindparam("outcome"), gpu_check_detail=sa.bindparam("detail"))
)
