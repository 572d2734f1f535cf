"""The ClusterManager's queries: clusters, leases of machines, lifecycle events, the logs leases shipped."""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Sequence
from typing import Any

import sqlalchemy as sa

from actors.db import cluster_queries as q
from actors.db import database, records
from actors.db import store as store_mod
from actors.db.database import Row
from actors.db.schema import account_quotas, accounts, cluster_logs, clusters, leases, machines
from dcl_core import domain


class ClusterStore(database.Database):
    # Reads under @records.decoded return rows here and records (clusters, leases) to their callers.

    # --- clusters -----------------------------------------------------------------------

    async def create_cluster(self, *, cluster: Row, leases: list[Row], event: str, now: float) -> None:
        """The cluster, its reserved leases and its first event, in one transaction."""

        row = {
            "id": cluster["id"],
            "owner_id": cluster["owner_id"],
            "name": cluster["name"],
            "spec": cluster["spec"],
            "status": cluster["status"],
            "created_at": now,
            "updated_at": now,
            "expires_at": cluster["expires_at"],
        }
        first_event = {"cluster_id": cluster["id"], "ts": now, "kind": domain.EventKind.CREATED.value, "message": event}
        await self.write_all(
            [
                (q.INSERT_CLUSTER, row),
                (q.INSERT_LEASE, [q.lease_values(cluster["id"], l, now) for l in leases]),
                (q.INSERT_EVENT, first_event),
            ]
        )

    @records.decoded(records.cluster_or_none)
    async def get_cluster(self, cluster_id: str) -> Row | None:
        return await self.fetch_one(q.CLUSTER_BY_ID, {"cluster_id": cluster_id})

    @records.decoded(records.clusters_by_id)
    async def get_clusters(self, cluster_ids: Sequence[str]) -> dict[str, Row]:
        """The clusters of these ids that exist, by id (one query)."""
        unique = sorted(set(cluster_ids))
        return {r["id"]: r for r in await self.fetch_all(q.CLUSTERS_BY_IDS, {"ids": unique})} if unique else {}

    @records.decoded(records.clusters_with_leases)
    async def clusters_with_leases(self, cluster_ids: Sequence[str]) -> tuple[dict[str, Row], dict[str, list[Row]]]:
        """get_clusters and leases_of_clusters at once, both read in one hop (the API's reads of clusters)."""
        unique = sorted(set(cluster_ids))  # none: an empty IN, which matches nothing
        rows, lease_rows = await self.fetch_each(
            [(q.CLUSTERS_BY_IDS, {"ids": unique}), (q.LEASES_OF_CLUSTERS, {"ids": unique})]
        )
        return {r["id"]: r for r in rows}, q.leases_by_cluster(unique, lease_rows)

    @records.decoded(records.clusters)
    async def list_clusters(self, owner_id: int | None = None) -> list[Row]:
        query = sa.select(clusters).order_by(clusters.c.created_at)
        if owner_id is not None:
            query = query.where(clusters.c.owner_id == owner_id)
        return await self.fetch_all(query)

    async def count_clusters_by_status(self) -> dict[str, int]:
        rows = await self.fetch_all(
            sa.select(clusters.c.status, sa.func.count().label("n")).group_by(clusters.c.status)
        )
        return {r["status"]: r["n"] for r in rows}

    @records.decoded(records.clusters)
    async def clusters_with_status(self, *statuses: domain.ClusterStatus) -> list[Row]:
        return await self.fetch_all(sa.select(clusters).where(clusters.c.status.in_([s.value for s in statuses])))

    async def set_cluster_status(
        self,
        cluster_id: str,
        status: domain.ClusterStatus,
        now: float,
        *,
        reason: str | None = None,
        only_from: tuple[domain.ClusterStatus, ...] = (),
        ending_as: domain.ClusterStatus | None = None,
    ) -> bool:
        """Moves the cluster to status; with only_from, only from one of those (returns False otherwise).

        ending_as records, with TERMINATING, the status the teardown ends in (a restart resumes it)."""
        values: dict[str, Any] = {
            "status": status.value,
            "updated_at": now,
            "reason": sa.func.coalesce(sa.literal(reason, sa.Text), clusters.c.reason),
        }
        if ending_as is not None:
            values["ending_as"] = ending_as.value
        if status is domain.ClusterStatus.RUNNING:
            values["running_at"] = sa.func.coalesce(clusters.c.running_at, now)
        if status.is_terminal():
            values["ended_at"] = sa.func.coalesce(clusters.c.ended_at, now)
        update = sa.update(clusters).where(clusters.c.id == cluster_id).values(values)
        if only_from:
            update = update.where(clusters.c.status.in_([s.value for s in only_from]))
        return await self.write(update) > 0

    async def clear_reason(self, cluster_id: str) -> None:
        await self.write(sa.update(clusters).where(clusters.c.id == cluster_id).values(reason=None))

    async def set_expiry(self, cluster_id: str, expires_at: float, now: float) -> None:
        await self.write(
            sa.update(clusters).where(clusters.c.id == cluster_id).values(expires_at=expires_at, updated_at=now)
        )

    # --- events -------------------------------------------------------------------------

    async def add_event(self, cluster_id: str, kind: domain.EventKind, message: str, now: float) -> None:
        await self.write(q.INSERT_EVENT, {"cluster_id": cluster_id, "ts": now, "kind": kind.value, "message": message})

    async def events(self, cluster_id: str, after_id: int = 0) -> list[Row]:
        return await self.fetch_all(q.EVENTS, {"cluster_id": cluster_id, "after_id": after_id})

    # --- logs ---------------------------------------------------------------------------

    async def add_logs(
        self,
        cluster_id: str,
        lease_id: str,
        role: str,
        machine_id: str,
        choose: Callable[[int], list[Row]],
        now: float,
    ) -> list[Row]:
        """Stores the files choose(bytes the cluster already keeps) picks, in one transaction: leases
        closing at once see each other's files, so together they never pass the cluster's cap."""
        used_by_cluster = sa.select(sa.func.coalesce(sa.func.sum(cluster_logs.c.kept_bytes), 0).label("used")).where(
            cluster_logs.c.cluster_id == cluster_id
        )

        async def statements(tx: database.Transaction) -> list[Row]:
            files = choose(database.written(await tx.fetchone(used_by_cluster), "a sum")["used"])
            await tx.executemany(
                cluster_logs.insert(),
                [
                    {
                        "cluster_id": cluster_id,
                        "lease_id": lease_id,
                        "role": role,
                        "machine_id": machine_id,
                        "name": f["name"],
                        "content": f["text"],
                        "bytes": f["bytes"],
                        "kept_bytes": len(f["text"].encode()),
                        "truncated": int(f["truncated"]),
                        "shipped_at": now,
                    }
                    for f in files
                ],
            )
            return files

        return await self.atomic(statements)

    async def log_index(self, cluster_id: str) -> list[Row]:
        g = cluster_logs.c
        rows = await self.fetch_all(
            sa.select(g.lease_id, g.role, g.machine_id, g.name, g.bytes, g.kept_bytes, g.truncated, g.shipped_at)
            .where(g.cluster_id == cluster_id)
            .order_by(g.id)
        )
        return [{**r, "truncated": bool(r["truncated"])} for r in rows]

    async def log_file(self, cluster_id: str, lease_id: str | None, name: str) -> Row | None:
        """The latest file of that name (of that lease, or of any: a job's driver log is on the head)."""
        g = cluster_logs.c
        query = sa.select(
            g.lease_id, g.role, g.name, g.content.label("text"), g.bytes, g.truncated, g.shipped_at
        ).where(g.cluster_id == cluster_id, g.name == name)
        if lease_id is not None:
            query = query.where(g.lease_id == lease_id)
        row = await self.fetch_one(query.order_by(g.id.desc()).limit(1))
        return {**row, "truncated": bool(row["truncated"])} if row else None

    async def purge_logs(self, ended_before: float) -> int:
        ended = sa.select(clusters.c.id).where(clusters.c.ended_at.is_not(None), clusters.c.ended_at < ended_before)
        return await self.write(sa.delete(cluster_logs).where(cluster_logs.c.cluster_id.in_(ended)))

    # --- leases -------------------------------------------------------------------------

    @records.decoded(records.leases)
    async def leases_of(self, cluster_id: str) -> list[Row]:
        return [q.decode_lease(r) for r in await self.fetch_all(q.LEASES_OF, {"cluster_id": cluster_id})]

    @records.decoded(records.leases_by_cluster)
    async def leases_of_clusters(self, cluster_ids: Sequence[str]) -> dict[str, list[Row]]:
        """leases_of for many clusters at once (one query): cluster id → its leases, each cluster asked for."""
        unique = sorted(set(cluster_ids))
        return q.leases_by_cluster(
            unique, await self.fetch_all(q.LEASES_OF_CLUSTERS, {"ids": unique}) if unique else []
        )

    @records.decoded(records.lease_or_none)
    async def get_lease(self, lease_id: str) -> Row | None:
        row = await self.fetch_one(q.LEASE_BY_ID, {"lease_id": lease_id})
        return q.decode_lease(row) if row else None

    @records.decoded(records.leases)
    async def leases_in_window(
        self, start: float, end: float, *, owner_id: int | None = None, provider_id: int | None = None
    ) -> list[Row]:
        """Leases whose node was in Ray at some time in [start, end], with their cluster's owner and machine's
        provider."""
        query = (
            sa.select(
                leases,
                clusters.c.owner_id,
                clusters.c.name.label("cluster_name"),
                machines.c.provider_id,
                machines.c.name.label("machine_name"),
            )
            .join_from(leases, clusters, clusters.c.id == leases.c.cluster_id)
            .join(machines, machines.c.id == leases.c.machine_id)
            .where(
                leases.c.joined_at.is_not(None),
                leases.c.joined_at < end,
                sa.or_(leases.c.left_at.is_(None), leases.c.left_at > start),
            )
        )
        if owner_id is not None:
            query = query.where(clusters.c.owner_id == owner_id)
        if provider_id is not None:
            query = query.where(machines.c.provider_id == provider_id)
        return [q.decode_lease(r) for r in await self.fetch_all(query)]

    @records.decoded(records.leases)
    async def active_leases(self) -> list[Row]:
        return [q.decode_lease(r) for r in await self.fetch_all(q.ACTIVE_LEASES)]

    async def active_lease_ids(self) -> list[str]:
        return await self.fetch_column(q.ACTIVE_LEASE_IDS)

    async def lease_holdings(self, lease_ids: list[str]) -> list[Row]:
        """What placement reads of these leases: id, machine, cluster, GPU indices, CPUs (none of it changes)."""
        rows = []
        for start in range(0, len(lease_ids), q.IDS_PER_QUERY):
            rows += await self.fetch_all(q.LEASE_HOLDINGS, {"ids": lease_ids[start : start + q.IDS_PER_QUERY]})
        for r in rows:
            r["gpus"] = json.loads(r["gpus"])
        return rows

    async def add_leases(self, cluster_id: str, leases: list[Row], now: float) -> None:
        await self.atomic(
            lambda tx: tx.executemany(q.INSERT_LEASE, [q.lease_values(cluster_id, l, now) for l in leases])
        )

    async def open_lease(
        self, lease_id: str, *, node_type: str, tags: Row, ports: Row, node_ip: str, now: float
    ) -> bool:
        """A reserved lease becomes open; False when it is no longer reserved (its cluster ended while the
        agent was opening it): an ended lease is never made open again."""
        opened = {
            "lease_id": lease_id,
            "node_type_": node_type,
            "tags_": json.dumps(tags),
            "ports_": json.dumps(ports),
            "node_ip_": node_ip,
            "now": now,
        }
        return await self.write(q.OPEN_LEASE, opened) > 0

    async def set_lease_tags(self, lease_id: str, tags: Row) -> None:
        await self.write(sa.update(leases).where(leases.c.id == lease_id).values(tags=json.dumps(tags)))

    async def mark_joined(self, lease_id: str, now: float) -> bool:
        return await self.write(q.MARK_JOINED, {"lease_id": lease_id, "now": now}) > 0

    async def end_lease(self, lease_id: str, status: domain.LeaseStatus, now: float) -> bool:
        """Closes or loses a lease that still held capacity; returns False if it already ended."""
        lost = int(status is domain.LeaseStatus.LOST)
        ended = (
            sa.update(leases)
            .where(leases.c.id == lease_id, q.ACTIVE)
            .values(status=status.value, left_at=sa.case((leases.c.joined_at.is_(None), leases.c.left_at), else_=now))
        )
        # A node that ran counts for its machine's reliability (actors.machines.reputation).
        ran_on = sa.select(leases.c.machine_id).where(leases.c.id == lease_id, leases.c.joined_at.is_not(None))
        counted = (
            sa.update(machines)
            .where(machines.c.id == ran_on.scalar_subquery())
            .values(
                leases_completed=machines.c.leases_completed + (1 - lost),
                leases_lost=machines.c.leases_lost + lost,
                changed_at=now,
            )
        )

        async def statements(tx: database.Transaction) -> int:
            changed = await tx.execute(ended)
            if changed:
                await tx.execute(counted)
            return changed

        return await self.atomic(statements) > 0

    # --- quotas ---------------------------------------------------------------------------

    async def account(self, account_id: int) -> Row | None:
        """Who an account is (the ProviderRegistry owns accounts; read-only here)."""
        return await self.fetch_one(q.ACCOUNT, {"account_id": account_id})

    @records.decoded(records.clusters)
    async def live_clusters_of(self, owner_id: int) -> list[Row]:
        """The owner's clusters that hold (or are acquiring) machines."""
        return await self.fetch_all(q.LIVE_CLUSTERS_OF, {"owner_id": owner_id})

    async def quota_overrides(self, account_id: int) -> Row | None:
        return await self.fetch_one(q.QUOTA_OVERRIDES, {"account_id": account_id})

    async def set_quota_overrides(self, account_id: int, overrides: Row, *, by: str, now: float) -> None:
        """Replaces the account's overrides (None: the platform's default)."""
        limits = {k: overrides.get(k) for k in ("max_clusters", "max_gpus", "max_cpus", "max_gpu_hours")}
        insert = store_mod.upsert(self, account_quotas).values(
            account_id=account_id, updated_at=now, updated_by=by, **limits
        )
        await self.write(
            insert.on_conflict_do_update(
                index_elements=[account_quotas.c.account_id],
                set_={c: insert.excluded[c] for c in (*limits, "updated_at", "updated_by")},
            )
        )

    # --- machines (read-only here: the ProviderRegistry owns them) -----------------------

    async def online_machines(self, cutoff: float) -> list[Row]:
        """Machines that may take new leases: online, with a heartbeat since cutoff, and no GPU check due or
        running (domain.GpuVerification.holds_placement)."""
        return await self.fetch_all(q.ONLINE_MACHINES, {"cutoff": cutoff})

    async def placement_machines(self, changed_since: float | None = None) -> list[Row]:
        """What placement reads of every machine (placeable or not), or of those changed since a time."""
        if changed_since is None:
            return await self.fetch_all(q.PLACEMENT_MACHINE)
        return await self.fetch_all(q.CHANGED_MACHINES, {"since": changed_since})

    async def unplaceable_machine_ids(self, cutoff: float) -> set[str]:
        """Machines that may not take new leases now (usually few: cheaper to read than the others): not
        online, or held by a GPU check (the complement of online_machines)."""
        return set(await self.fetch_column(q.UNPLACEABLE_IDS, {"cutoff": cutoff}))

    async def machine_statuses(self, machine_ids: list[str], cutoff: float) -> dict[str, str]:
        """Effective status of each machine: online only while its heartbeats are fresh."""
        if not machine_ids:
            return {}
        rows = await self.fetch_all(q.MACHINE_STATUSES, {"ids": machine_ids})
        return {
            r["id"]: domain.MachineStatus.effective(r["status"], r["last_heartbeat"], cutoff=cutoff).value for r in rows
        }

    async def machine_summary(self, machine_id: str) -> Row | None:
        """What node labels need: GPU model and count, and the provider's username."""
        return await self.fetch_one(
            sa.select(machines.c.id, machines.c.gpu_model, machines.c.gpus, accounts.c.username.label("provider"))
            .join_from(machines, accounts, accounts.c.id == machines.c.provider_id)
            .where(machines.c.id == machine_id)
        )

    # --- GPU checks (actors.machines.gpu_checks: the verification columns of machines are written here, under the
    # placement lock; the registry sets the first status when a machine registers) --------------------

    async def due_gpu_checks(self, cutoff: float) -> list[Row]:
        """Machines whose GPU check is due and can start now: online, and no lease holds any of their capacity."""
        return await self.fetch_all(q.DUE_GPU_CHECKS, {"cutoff": cutoff})

    async def begin_gpu_check(self, machine_id: str, lease_id: str) -> bool:
        """pending → checking, with the check lease's id; False when the machine is no longer pending."""
        return await self.write(q.BEGIN_GPU_CHECK, {"machine_id": machine_id, "lease_id": lease_id}) == 1

    async def finish_gpu_check(
        self, machine_id: str, lease_id: str, status: domain.GpuVerification, detail_json: str, now: float
    ) -> bool:
        """The check's outcome, unless the machine registered again meanwhile (its claim may have changed)."""
        outcome = {"machine_id": machine_id, "lease_id": lease_id, "outcome": status.value, "detail": detail_json}
        return await self.write(q.FINISH_GPU_CHECK, {**outcome, "now": now}) == 1

    async def restart_gpu_checks(self, running: Collection[str] = ()) -> int:
        """Checks no task runs (a restart cut them short, or their outcome could not be written) are due
        again; the agent closes their leases once its heartbeat hears that no one holds them."""
        return await self.write(q.RESTART_GPU_CHECKS, {"running": list(running)})

    async def unassessed_machines(self) -> list[Row]:
        """Machines registered before GPU verification existed (no status yet)."""
        return await self.fetch_all(q.UNASSESSED_MACHINES)

    async def assess_machine(self, machine_id: str, status: domain.GpuVerification, detail_json: str) -> None:
        await self.write(q.ASSESS_MACHINE, {"machine_id": machine_id, "outcome": status.value, "detail": detail_json})
