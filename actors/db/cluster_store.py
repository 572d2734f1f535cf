"""The ClusterManager's queries: clusters, leases of machines, lifecycle events, the logs leases shipped."""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Sequence

from actors.db import store as store_mod
from actors.db.store import Database
from dcl_core import domain

ACTIVE_LEASE_STATUSES = tuple(s.value for s in domain.LeaseStatus if s.holds_capacity())
_IDS_PER_QUERY = 500  # ids in one `IN (...)` (SQLite's limit on parameters was 999 before 3.32)
_HELD_BY_CHECKS = tuple(s.value for s in domain.GpuVerification.placement_holders())
_HELD_MARKS = ",".join("?" * len(_HELD_BY_CHECKS))

_INSERT_LEASE = (
    "INSERT INTO leases (id, cluster_id, machine_id, role, gpus, cpus, price_per_gpu_hour,"
    " price_per_cpu_hour, status, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _lease_values(cluster_id: str, lease: dict, now: float) -> tuple:
    # Prices are copied at reservation: a provider changing its price does not re-bill running leases.
    return (
        lease["id"],
        cluster_id,
        lease["machine_id"],
        lease["role"],
        json.dumps(lease["gpus"]),
        lease["cpus"],
        lease.get("price_per_gpu_hour", 0.0),
        lease.get("price_per_cpu_hour", 0.0),
        domain.LeaseStatus.RESERVED.value,
        now,
    )


# What placement reads of a machine (not the spec JSON: it runs over many machines).
_PLACEMENT_MACHINE = (
    "SELECT m.id, m.gpu_model, m.gpus, m.cpus, m.price_per_gpu_hour, m.price_per_cpu_hour,"
    " m.registered_at, m.online_seconds, m.leases_completed, m.leases_lost, m.gpu_check,"
    " a.username AS provider FROM machines m JOIN accounts a ON a.id = m.provider_id"
)


class ClusterStore(Database):
    # --- clusters -----------------------------------------------------------------------

    async def create_cluster(self, *, cluster: dict, leases: list[dict], event: str, now: float) -> None:
        """The cluster, its reserved leases and its first event, in one transaction."""

        async def statements(conn) -> None:
            await conn.execute(
                "INSERT INTO clusters (id, owner_id, name, spec, status, created_at, updated_at, expires_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    cluster["id"],
                    cluster["owner_id"],
                    cluster["name"],
                    cluster["spec"],
                    cluster["status"],
                    now,
                    now,
                    cluster["expires_at"],
                ),
            )
            await conn.executemany(_INSERT_LEASE, [_lease_values(cluster["id"], l, now) for l in leases])
            await conn.execute(
                "INSERT INTO cluster_events (cluster_id, ts, kind, message) VALUES (?, ?, ?, ?)",
                (cluster["id"], now, "created", event),
            )

        await self._atomic(statements)

    async def get_cluster(self, cluster_id: str) -> dict | None:
        return await self._fetchone("SELECT * FROM clusters WHERE id = ?", (cluster_id,))

    async def get_clusters(self, cluster_ids: Sequence[str]) -> dict[str, dict]:
        """The clusters of these ids that exist, by id (one query)."""
        unique = sorted(set(cluster_ids))
        if not unique:
            return {}
        rows = await self._fetchall(f"SELECT * FROM clusters WHERE id IN ({','.join('?' * len(unique))})", unique)
        return {r["id"]: r for r in rows}

    async def list_clusters(self, owner_id: int | None = None) -> list[dict]:
        if owner_id is None:
            return await self._fetchall("SELECT * FROM clusters ORDER BY created_at")
        return await self._fetchall("SELECT * FROM clusters WHERE owner_id = ? ORDER BY created_at", (owner_id,))

    async def count_clusters_by_status(self) -> dict[str, int]:
        rows = await self._fetchall("SELECT status, COUNT(*) AS n FROM clusters GROUP BY status")
        return {r["status"]: r["n"] for r in rows}

    async def clusters_with_status(self, *statuses: domain.ClusterStatus) -> list[dict]:
        marks = ",".join("?" * len(statuses))
        return await self._fetchall(
            f"SELECT * FROM clusters WHERE status IN ({marks})", tuple(s.value for s in statuses)
        )

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
        sql = "UPDATE clusters SET status = ?, updated_at = ?, reason = COALESCE(?, reason)"
        args: list = [status.value, now, reason]
        if ending_as is not None:
            sql += ", ending_as = ?"
            args.append(ending_as.value)
        if status is domain.ClusterStatus.RUNNING:
            sql += ", running_at = COALESCE(running_at, ?)"
            args.append(now)
        if status.is_terminal():
            sql += ", ended_at = COALESCE(ended_at, ?)"
            args.append(now)
        sql += " WHERE id = ?"
        args.append(cluster_id)
        if only_from:
            sql += f" AND status IN ({','.join('?' * len(only_from))})"
            args += [s.value for s in only_from]
        return await self._write(sql, tuple(args)) > 0

    async def clear_reason(self, cluster_id: str) -> None:
        await self._write("UPDATE clusters SET reason = NULL WHERE id = ?", (cluster_id,))

    async def set_expiry(self, cluster_id: str, expires_at: float, now: float) -> None:
        await self._write(
            "UPDATE clusters SET expires_at = ?, updated_at = ? WHERE id = ?", (expires_at, now, cluster_id)
        )

    # --- events -------------------------------------------------------------------------

    async def add_event(self, cluster_id: str, kind: domain.EventKind, message: str, now: float) -> None:
        await self._write(
            "INSERT INTO cluster_events (cluster_id, ts, kind, message) VALUES (?, ?, ?, ?)",
            (cluster_id, now, kind.value, message),
        )

    async def events(self, cluster_id: str, after_id: int = 0) -> list[dict]:
        return await self._fetchall(
            "SELECT id, ts, kind, message FROM cluster_events WHERE cluster_id = ? AND id > ? ORDER BY id",
            (cluster_id, after_id),
        )

    # --- logs ---------------------------------------------------------------------------

    async def add_logs(
        self,
        cluster_id: str,
        lease_id: str,
        role: str,
        machine_id: str,
        choose: Callable[[int], list[dict]],
        now: float,
    ) -> list[dict]:
        """Stores the files choose(bytes the cluster already keeps) picks, in one transaction: leases
        closing at once see each other's files, so together they never pass the cluster's cap."""

        async def statements(conn) -> list[dict]:
            used = (
                await conn.fetchone(
                    "SELECT COALESCE(SUM(kept_bytes), 0) AS used FROM cluster_logs WHERE cluster_id = ?", (cluster_id,)
                )
            )["used"]
            files = choose(used)
            await conn.executemany(
                "INSERT INTO cluster_logs (cluster_id, lease_id, role, machine_id, name, content, bytes, kept_bytes,"
                " truncated, shipped_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        cluster_id,
                        lease_id,
                        role,
                        machine_id,
                        f["name"],
                        f["text"],
                        f["bytes"],
                        len(f["text"].encode()),
                        int(f["truncated"]),
                        now,
                    )
                    for f in files
                ],
            )
            return files

        return await self._atomic(statements)

    async def log_index(self, cluster_id: str) -> list[dict]:
        rows = await self._fetchall(
            "SELECT lease_id, role, machine_id, name, bytes, kept_bytes, truncated, shipped_at FROM cluster_logs"
            " WHERE cluster_id = ? ORDER BY id",
            (cluster_id,),
        )
        return [{**r, "truncated": bool(r["truncated"])} for r in rows]

    async def log_file(self, cluster_id: str, lease_id: str | None, name: str) -> dict | None:
        """The latest file of that name (of that lease, or of any: a job's driver log is on the head)."""
        sql = (
            "SELECT lease_id, role, name, content AS text, bytes, truncated, shipped_at FROM cluster_logs"
            " WHERE cluster_id = ? AND name = ?"
        )
        args: tuple = (cluster_id, name)
        if lease_id is not None:
            sql, args = sql + " AND lease_id = ?", (*args, lease_id)
        row = await self._fetchone(sql + " ORDER BY id DESC LIMIT 1", args)
        return {**row, "truncated": bool(row["truncated"])} if row else None

    async def purge_logs(self, ended_before: float) -> int:
        return await self._write(
            "DELETE FROM cluster_logs WHERE cluster_id IN (SELECT id FROM clusters WHERE ended_at IS NOT NULL"
            " AND ended_at < ?)",
            (ended_before,),
        )

    # --- leases -------------------------------------------------------------------------

    async def leases_of(self, cluster_id: str) -> list[dict]:
        rows = await self._fetchall("SELECT * FROM leases WHERE cluster_id = ? ORDER BY created_at, id", (cluster_id,))
        return [decode_lease(r) for r in rows]

    async def leases_of_clusters(self, cluster_ids: Sequence[str]) -> dict[str, list[dict]]:
        """leases_of for many clusters at once (one query): cluster id → its leases, each cluster asked for."""
        unique = sorted(set(cluster_ids))
        found: dict[str, list[dict]] = {cid: [] for cid in unique}
        if unique:
            rows = await self._fetchall(
                f"SELECT * FROM leases WHERE cluster_id IN ({','.join('?' * len(unique))}) ORDER BY created_at, id",
                unique,
            )
            for r in rows:
                found[r["cluster_id"]].append(decode_lease(r))
        return found

    async def get_lease(self, lease_id: str) -> dict | None:
        row = await self._fetchone("SELECT * FROM leases WHERE id = ?", (lease_id,))
        return decode_lease(row) if row else None

    async def leases_in_window(
        self, start: float, end: float, *, owner_id: int | None = None, provider_id: int | None = None
    ) -> list[dict]:
        """Leases whose node was in Ray at some time in [start, end], with their cluster's owner and machine's
        provider."""
        sql = (
            "SELECT l.*, c.owner_id, c.name AS cluster_name, m.provider_id, m.name AS machine_name FROM leases l"
            " JOIN clusters c ON c.id = l.cluster_id JOIN machines m ON m.id = l.machine_id"
            " WHERE l.joined_at IS NOT NULL AND l.joined_at < ? AND (l.left_at IS NULL OR l.left_at > ?)"
        )
        args: list = [end, start]
        if owner_id is not None:
            sql += " AND c.owner_id = ?"
            args.append(owner_id)
        if provider_id is not None:
            sql += " AND m.provider_id = ?"
            args.append(provider_id)
        return [decode_lease(r) for r in await self._fetchall(sql, tuple(args))]

    async def active_leases(self) -> list[dict]:
        marks = ",".join("?" * len(ACTIVE_LEASE_STATUSES))
        rows = await self._fetchall(f"SELECT * FROM leases WHERE status IN ({marks})", ACTIVE_LEASE_STATUSES)
        return [decode_lease(r) for r in rows]

    async def active_lease_ids(self) -> list[str]:
        marks = ",".join("?" * len(ACTIVE_LEASE_STATUSES))
        return await self._fetchcolumn(f"SELECT id FROM leases WHERE status IN ({marks})", ACTIVE_LEASE_STATUSES)

    async def lease_holdings(self, lease_ids: list[str]) -> list[dict]:
        """What placement reads of these leases: id, machine, cluster, GPU indices, CPUs (none of it changes)."""
        rows = []
        for start in range(0, len(lease_ids), _IDS_PER_QUERY):
            chunk = lease_ids[start : start + _IDS_PER_QUERY]
            rows += await self._fetchall(
                f"SELECT id, machine_id, cluster_id, gpus, cpus FROM leases WHERE id IN ({','.join('?' * len(chunk))})",
                tuple(chunk),
            )
        for r in rows:
            r["gpus"] = json.loads(r["gpus"])
        return rows

    async def add_leases(self, cluster_id: str, leases: list[dict], now: float) -> None:
        await self._atomic(
            lambda conn: conn.executemany(_INSERT_LEASE, [_lease_values(cluster_id, l, now) for l in leases])
        )

    async def open_lease(
        self, lease_id: str, *, node_type: str, tags: dict, ports: dict, node_ip: str, now: float
    ) -> bool:
        """A reserved lease becomes open; False when it is no longer reserved (its cluster ended while the
        agent was opening it): an ended lease is never made open again."""
        return (
            await self._write(
                "UPDATE leases SET status = ?, node_type = ?, tags = ?, ports = ?, node_ip = ?, opened_at = ?"
                " WHERE id = ? AND status = ?",
                (
                    domain.LeaseStatus.OPEN.value,
                    node_type,
                    json.dumps(tags),
                    json.dumps(ports),
                    node_ip,
                    now,
                    lease_id,
                    domain.LeaseStatus.RESERVED.value,
                ),
            )
            > 0
        )

    async def set_lease_tags(self, lease_id: str, tags: dict) -> None:
        await self._write("UPDATE leases SET tags = ? WHERE id = ?", (json.dumps(tags), lease_id))

    async def mark_joined(self, lease_id: str, now: float) -> bool:
        return (
            await self._write("UPDATE leases SET joined_at = ? WHERE id = ? AND joined_at IS NULL", (now, lease_id)) > 0
        )

    async def end_lease(self, lease_id: str, status: domain.LeaseStatus, now: float) -> bool:
        """Closes or loses a lease that still held capacity; returns False if it already ended."""
        marks = ",".join("?" * len(ACTIVE_LEASE_STATUSES))
        lost = int(status is domain.LeaseStatus.LOST)

        async def statements(tx) -> int:
            changed = await tx.execute(
                f"UPDATE leases SET status = ?, left_at = CASE WHEN joined_at IS NULL THEN left_at ELSE ? END"
                f" WHERE id = ? AND status IN ({marks})",
                (status.value, now, lease_id, *ACTIVE_LEASE_STATUSES),
            )
            if changed:  # a node that ran counts for its machine's reliability (actors.machines.reputation)
                await tx.execute(
                    "UPDATE machines SET leases_completed = leases_completed + ?, leases_lost = leases_lost + ?,"
                    " changed_at = ? WHERE id = (SELECT machine_id FROM leases WHERE id = ? AND joined_at IS NOT NULL)",
                    (1 - lost, lost, now, lease_id),
                )
            return changed

        return await self._atomic(statements) > 0

    # --- quotas ---------------------------------------------------------------------------

    async def account(self, account_id: int) -> dict | None:
        """Who an account is (the ProviderRegistry owns accounts; read-only here)."""
        return await self._fetchone("SELECT id, username, role FROM accounts WHERE id = ?", (account_id,))

    async def live_clusters_of(self, owner_id: int) -> list[dict]:
        """The owner's clusters that hold (or are acquiring) machines: their spec and deadline."""
        live = tuple(s.value for s in domain.ClusterStatus.active())
        return await self._fetchall(
            f"SELECT id, spec, expires_at FROM clusters WHERE owner_id = ? AND status IN ({','.join('?' * len(live))})",
            (owner_id, *live),
        )

    async def quota_overrides(self, account_id: int) -> dict | None:
        return await self._fetchone("SELECT * FROM account_quotas WHERE account_id = ?", (account_id,))

    async def set_quota_overrides(self, account_id: int, overrides: dict, *, by: str, now: float) -> None:
        """Replaces the account's overrides (None: the platform's default)."""
        await self._write(
            "INSERT INTO account_quotas (account_id, max_clusters, max_gpus, max_cpus, max_gpu_hours, updated_at,"
            " updated_by) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (account_id) DO UPDATE SET"
            " max_clusters = excluded.max_clusters, max_gpus = excluded.max_gpus, max_cpus = excluded.max_cpus,"
            " max_gpu_hours = excluded.max_gpu_hours, updated_at = excluded.updated_at,"
            " updated_by = excluded.updated_by",
            (
                account_id,
                overrides.get("max_clusters"),
                overrides.get("max_gpus"),
                overrides.get("max_cpus"),
                overrides.get("max_gpu_hours"),
                now,
                by,
            ),
        )

    # --- machines (read-only here: the ProviderRegistry owns them) -----------------------

    async def online_machines(self, cutoff: float) -> list[dict]:
        """Machines that may take new leases: online, with a heartbeat since cutoff, and no GPU check due or
        running (domain.GpuVerification.holds_placement)."""
        return await self._fetchall(
            f"{_PLACEMENT_MACHINE} WHERE {store_mod.online_where('m')}"
            f" AND (m.gpu_check IS NULL OR m.gpu_check NOT IN ({_HELD_MARKS}))",
            (cutoff, *_HELD_BY_CHECKS),
        )

    async def placement_machines(self, changed_since: float | None = None) -> list[dict]:
        """What placement reads of every machine (placeable or not), or of those changed since a time."""
        if changed_since is None:
            return await self._fetchall(_PLACEMENT_MACHINE)
        return await self._fetchall(f"{_PLACEMENT_MACHINE} WHERE m.changed_at >= ?", (changed_since,))

    async def unplaceable_machine_ids(self, cutoff: float) -> set[str]:
        """Machines that may not take new leases now (usually few: cheaper to read than the others): not
        online, or held by a GPU check (the complement of online_machines)."""
        return set(
            await self._fetchcolumn(
                f"{store_mod.not_online_ids_sql('m')} UNION ALL SELECT m.id FROM machines m"
                f" WHERE m.gpu_check IN ({_HELD_MARKS})",
                (cutoff, *_HELD_BY_CHECKS),
            )
        )

    async def machine_statuses(self, machine_ids: list[str], cutoff: float) -> dict[str, str]:
        """Effective status of each machine: online only while its heartbeats are fresh."""
        if not machine_ids:
            return {}
        marks = ",".join("?" * len(machine_ids))
        rows = await self._fetchall(
            f"SELECT id, status, last_heartbeat FROM machines WHERE id IN ({marks})", tuple(machine_ids)
        )
        return {
            r["id"]: domain.MachineStatus.effective(r["status"], r["last_heartbeat"], cutoff=cutoff).value for r in rows
        }

    async def machine_summary(self, machine_id: str) -> dict | None:
        """What node labels need: GPU model and count, and the provider's username."""
        return await self._fetchone(
            "SELECT m.id, m.gpu_model, m.gpus, a.username AS provider FROM machines m"
            " JOIN accounts a ON a.id = m.provider_id WHERE m.id = ?",
            (machine_id,),
        )

    # --- GPU checks (actors.machines.gpu_checks: the verification columns of machines are written here, under the
    # placement lock; the registry sets the first status when a machine registers) --------------------

    async def due_gpu_checks(self, cutoff: float) -> list[dict]:
        """Machines whose GPU check is due and can start now: online, and no lease holds any of their capacity."""
        return await self._fetchall(
            "SELECT m.id, m.spec FROM machines m WHERE m.gpu_check = ?"
            f" AND {store_mod.online_where('m')} AND NOT EXISTS (SELECT 1 FROM leases l WHERE l.machine_id = m.id"
            f" AND l.status IN ({','.join('?' * len(ACTIVE_LEASE_STATUSES))}))",
            (domain.GpuVerification.PENDING.value, cutoff, *ACTIVE_LEASE_STATUSES),
        )

    async def begin_gpu_check(self, machine_id: str, lease_id: str) -> bool:
        """pending → checking, with the check lease's id; False when the machine is no longer pending."""
        return (
            await self._write(
                "UPDATE machines SET gpu_check = ?, gpu_check_lease = ? WHERE id = ? AND gpu_check = ?",
                (domain.GpuVerification.CHECKING.value, lease_id, machine_id, domain.GpuVerification.PENDING.value),
            )
            == 1
        )

    async def finish_gpu_check(
        self, machine_id: str, lease_id: str, status: domain.GpuVerification, detail_json: str, now: float
    ) -> bool:
        """The check's outcome, unless the machine registered again meanwhile (its claim may have changed)."""
        return (
            await self._write(
                "UPDATE machines SET gpu_check = ?, gpu_check_detail = ?, gpu_checked_at = ?, gpu_check_lease = NULL,"
                " changed_at = ? WHERE id = ? AND gpu_check = ? AND gpu_check_lease = ?",
                (status.value, detail_json, now, now, machine_id, domain.GpuVerification.CHECKING.value, lease_id),
            )
            == 1
        )

    async def restart_gpu_checks(self, running: Collection[str] = ()) -> int:
        """Checks no task runs (a restart cut them short, or their outcome could not be written) are due
        again; the agent closes their leases once its heartbeat hears that no one holds them."""
        keep = tuple(running)
        return await self._write(
            "UPDATE machines SET gpu_check = ?, gpu_check_lease = NULL WHERE gpu_check = ?"
            + (f" AND id NOT IN ({','.join('?' * len(keep))})" if keep else ""),
            (domain.GpuVerification.PENDING.value, domain.GpuVerification.CHECKING.value, *keep),
        )

    async def unassessed_machines(self) -> list[dict]:
        """Machines registered before GPU verification existed (no status yet)."""
        return await self._fetchall("SELECT id, spec FROM machines WHERE gpu_check IS NULL")

    async def assess_machine(self, machine_id: str, status: domain.GpuVerification, detail_json: str) -> None:
        await self._write(
            "UPDATE machines SET gpu_check = ?, gpu_check_detail = ? WHERE id = ? AND gpu_check IS NULL",
            (status.value, detail_json, machine_id),
        )


def decode_lease(row: dict) -> dict:
    lease = dict(row)
    lease["gpus"] = json.loads(row["gpus"])
    lease["tags"] = json.loads(row["tags"] or "{}")
    lease["ports"] = json.loads(row["ports"]) if row["ports"] else None
    return lease
