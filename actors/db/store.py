"""The ProviderRegistry's queries: accounts, machines and their keys (SQLAlchemy Core over actors.db.schema)."""

from __future__ import annotations

import json
from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from actors.db import database
from actors.db.database import Row
from actors.db.schema import accounts, leases, machine_keys, machines
from dcl_core import domain, errors

_ONLINE = domain.MachineStatus.ONLINE.value
# The leases that still hold their machine's capacity (the ClusterManager's statements use it too).
ACTIVE_LEASE_STATUSES = tuple(s.value for s in domain.LeaseStatus if s.holds_capacity())


def upsert(db: database.Database, table: sa.Table) -> postgresql.Insert | sqlite.Insert:
    """INSERT ... ON CONFLICT in the database's own dialect (both spell it the same; SQLAlchemy builds it per
    dialect)."""
    return (postgresql.insert if db.backend == database.POSTGRESQL else sqlite.insert)(table)


def online() -> sa.ColumnElement[bool]:
    """The online rule (dcl_core.domain.MachineStatus.effective) over a machines row; its "cutoff" bind
    parameter is now - PlatformSettings.offline_after_s."""
    return sa.and_(machines.c.status == _ONLINE, machines.c.last_heartbeat >= sa.bindparam("cutoff"))


def not_online_ids() -> list[sa.Select[tuple[str]]]:
    """The ids of the machines `online` leaves out (a machine never heard from included), as index range reads
    (machines_liveness) rather than a scan of every machine: selects to UNION ALL (SQLite takes no nested
    compound select); they take the "cutoff" bind parameter."""
    m = machines.c
    others = [s.value for s in domain.MachineStatus if s is not domain.MachineStatus.ONLINE]
    return [
        sa.select(m.id).where(m.status.in_(others)),
        sa.select(m.id).where(m.status == _ONLINE, m.last_heartbeat < sa.bindparam("cutoff")),
        sa.select(m.id).where(m.status == _ONLINE, m.last_heartbeat.is_(None)),
    ]


_MACHINE = sa.select(machines, accounts.c.username.label("provider")).join_from(
    machines, accounts, accounts.c.id == machines.c.provider_id
)
_MACHINE_BY_KEY = _MACHINE.where(
    machines.c.provider_id == sa.bindparam("provider_id"), machines.c.machine_key == sa.bindparam("machine_key")
)
_KEY = sa.select(
    machine_keys.c.id,
    machine_keys.c.machine_id,
    machine_keys.c.created_at,
    machine_keys.c.revoked_at,
    machines.c.name.label("machine_name"),
    machines.c.provider_id,
).join_from(machine_keys, machines, machines.c.id == machine_keys.c.machine_id)
# The hot statements are built once: building and keying a statement costs tens of µs per call.
_ACCOUNT_BY_ID = sa.select(accounts).where(accounts.c.id == sa.bindparam("account_id"))
_ACCOUNT_BY_NAME = sa.select(accounts).where(accounts.c.username == sa.bindparam("username"))
_MACHINE_BY_ID = _MACHINE.where(machines.c.id == sa.bindparam("machine_id"))
# A batch of heartbeats reads its machines and writes their beats on the fast path (database.prepared).
_MACHINES_BY_IDS = database.prepared(_MACHINE.where(machines.c.id.in_(sa.bindparam("ids", expanding=True))))
_ONLINE_BY_MODEL = sa.case((machines.c.gpus > 0, machines.c.gpu_model)).label("model")
_COUNT_ONLINE_BY_MODEL = (
    sa.select(_ONLINE_BY_MODEL, sa.func.count().label("machines")).where(online()).group_by(_ONLINE_BY_MODEL)
)
_SILENT = sa.and_(machines.c.status == _ONLINE, sa.not_(online()))
_SILENT_IDS = sa.select(machines.c.id).where(_SILENT)
_SILENT_OFFLINE = sa.update(machines).where(_SILENT).values(status=domain.MachineStatus.OFFLINE.value)
# Asked for each batch of heartbeats that list leases: the live leases on its machines, then their GPU check leases.
_LIVE_LEASES_ON = database.prepared(
    sa.select(leases.c.machine_id, leases.c.id).where(
        leases.c.machine_id.in_(sa.bindparam("ids", expanding=True)), leases.c.status.in_(ACTIVE_LEASE_STATUSES)
    )
)
_CHECK_LEASES_ON = database.prepared(
    sa.select(machines.c.id.label("machine_id"), machines.c.gpu_check_lease.label("id")).where(
        machines.c.id.in_(sa.bindparam("ids", expanding=True)),
        machines.c.gpu_check == domain.GpuVerification.CHECKING.value,
    )
)
_ACTIVE_KEY = sa.select(machine_keys).where(
    machine_keys.c.machine_id == sa.bindparam("machine_id"), machine_keys.c.revoked_at.is_(None)
)
# A heartbeat: a gap since the last one of at most online_within_s counts as time online.
_HEARTBEAT = database.prepared(
    sa.update(machines)
    .where(machines.c.id == sa.bindparam("machine_id"))
    .values(
        online_seconds=machines.c.online_seconds
        + sa.case(
            (
                sa.and_(
                    machines.c.last_heartbeat.is_not(None),
                    (sa.bindparam("now") - machines.c.last_heartbeat).between(0, sa.bindparam("within")),
                ),
                sa.bindparam("now") - machines.c.last_heartbeat,
            ),
            else_=0,
        ),
        last_heartbeat=sa.bindparam("now"),
        usage=sa.bindparam("usage_json"),
        status=_ONLINE,
    )
)


class Store(database.Database):
    """The ProviderRegistry's queries: accounts and machines."""

    # --- accounts -----------------------------------------------------------------------

    async def create_account(self, username: str, password_hash: str, role: domain.Role, now: float) -> Row:
        try:
            await self.write(
                accounts.insert().values(
                    username=username, password_hash=password_hash, role=role.value, created_at=now
                )
            )
        except database.IntegrityError:  # rolled back already
            raise errors.Conflict(f"username '{username}' is already taken", username=username) from None
        return database.written(await self.get_account_by_username(username), f"account {username}")

    async def get_account(self, account_id: int) -> Row | None:
        return await self.fetch_one(_ACCOUNT_BY_ID, {"account_id": account_id})

    async def get_account_by_username(self, username: str) -> Row | None:
        return await self.fetch_one(_ACCOUNT_BY_NAME, {"username": username})

    async def list_accounts(self) -> list[Row]:
        return await self.fetch_all(sa.select(accounts).order_by(accounts.c.id))

    async def count_accounts(self, role: domain.Role) -> int:
        found: list[int] = await self.fetch_column(sa.select(sa.func.count()).where(accounts.c.role == role.value))
        return found[0]

    # --- machines -----------------------------------------------------------------------

    async def upsert_machine(
        self,
        *,
        machine_id: str,
        provider_id: int,
        machine_key: str,
        name: str,
        spec: domain.MachineSpec,
        price_per_gpu_hour: float,
        price_per_cpu_hour: float,
        now: float,
        gpu_check: tuple[domain.GpuVerification, str] | None = None,
    ) -> Row:
        """Insert, or refresh the machine this provider registered earlier with the same key.
        gpu_check: its new GPU verification status and detail (JSON), in the same statement (None: unchanged;
        a check in flight is then forgotten: its outcome no longer applies)."""
        status, detail = (gpu_check[0].value, gpu_check[1]) if gpu_check else (None, None)
        insert = upsert(self, machines).values(
            id=machine_id,
            provider_id=provider_id,
            machine_key=machine_key,
            name=name,
            spec=spec.model_dump_json(),
            gpu_model=spec.gpu_model,
            ray_version=spec.lease_runtime.ray,
            python_version=spec.lease_runtime.python,
            gpus=len(spec.gpus),
            cpus=spec.cpus,
            memory_mb=spec.memory_mb,
            price_per_gpu_hour=price_per_gpu_hour,
            price_per_cpu_hour=price_per_cpu_hour,
            status=_ONLINE,
            registered_at=now,
            last_heartbeat=now,
            gpu_check=status,
            gpu_check_detail=detail,
            changed_at=now,
        )
        new = insert.excluded
        refreshed = {
            c: new[c]
            for c in (
                "name",
                "spec",
                "gpu_model",
                "ray_version",
                "python_version",
                "gpus",
                "cpus",
                "memory_mb",
                "price_per_gpu_hour",
                "price_per_cpu_hour",
                "status",
                "last_heartbeat",
                "changed_at",
            )
        }
        # A new GPU status replaces the check's columns; none keeps them.
        unchanged = new.gpu_check.is_(None)
        kept = {
            c: sa.case((unchanged, machines.c[c]), else_=new[c])
            for c in ("gpu_check_detail", "gpu_checked_at", "gpu_check_lease")
        }
        await self.write(
            insert.on_conflict_do_update(
                index_elements=[machines.c.provider_id, machines.c.machine_key],
                set_={**refreshed, "gpu_check": sa.func.coalesce(new.gpu_check, machines.c.gpu_check), **kept},
            )
        )
        return database.written(await self.get_machine_by_key(provider_id, machine_key), f"machine {machine_id}")

    async def get_machine_by_key(self, provider_id: int, machine_key: str) -> Row | None:
        return await self.fetch_one(_MACHINE_BY_KEY, {"provider_id": provider_id, "machine_key": machine_key})

    async def get_machine(self, machine_id: str) -> Row | None:
        return await self.fetch_one(_MACHINE_BY_ID, {"machine_id": machine_id})

    async def list_machines(self, provider_id: int | None = None) -> list[Row]:
        query = _MACHINE.order_by(machines.c.registered_at)
        if provider_id is not None:
            query = query.where(machines.c.provider_id == provider_id)
        return await self.fetch_all(query)

    async def list_machines_by_status(self, status: domain.MachineStatus) -> list[Row]:
        return await self.fetch_all(_MACHINE.where(machines.c.status == status.value))

    async def count_online_by_gpu_model(self, cutoff: float) -> dict[str | None, int]:
        """Online machines per GPU model (None: CPU-only), counted by the database: the gauge the sweeper
        refreshes every few seconds must not read every row into the registry's event loop."""
        rows = await self.fetch_all(_COUNT_ONLINE_BY_MODEL, {"cutoff": cutoff})
        return {r["model"]: r["machines"] for r in rows}

    async def record_heartbeat(
        self,
        machine_id: str,
        now: float,
        usage: domain.MachineUsage,
        online_within_s: float = 0.0,
        lock_wait_s: float | None = None,
    ) -> None:
        await self.record_heartbeats([(machine_id, usage)], now, online_within_s, lock_wait_s)

    async def record_heartbeats(
        self,
        beats: Sequence[tuple[str, domain.MachineUsage]],
        now: float,
        online_within_s: float = 0.0,
        lock_wait_s: float | None = None,
    ) -> None:
        """Many machines' heartbeats (machine id, usage) in one transaction. A gap since a machine's last
        heartbeat of at most online_within_s counts as time online; lock_wait_s as in Database.atomic."""
        rows = [
            {"machine_id": machine_id, "now": now, "within": online_within_s, "usage_json": usage.model_dump_json()}
            for machine_id, usage in beats
        ]
        await self.write_many(_HEARTBEAT, rows, lock_wait_s)

    async def get_machines(self, machine_ids: Sequence[str]) -> dict[str, Row]:
        """The machines of these ids that exist, by id (one query)."""
        if not machine_ids:
            return {}
        rows = await self.fetch_all(_MACHINES_BY_IDS, {"ids": sorted(set(machine_ids))})
        return {r["id"]: r for r in rows}

    async def live_lease_ids(self, machine_ids: Sequence[str]) -> dict[str, set[str]]:
        """Per machine asked about, the leases on it that still hold capacity (the leases table is the
        ClusterManager's) and its GPU check lease while one runs; both read in one hop."""
        found: dict[str, set[str]] = {machine_id: set() for machine_id in machine_ids}
        if not found:
            return found
        params = {"ids": sorted(found)}
        for rows in await self.fetch_each([(_LIVE_LEASES_ON, params), (_CHECK_LEASES_ON, params)]):
            for row in rows:
                if row["id"]:
                    found[row["machine_id"]].add(row["id"])
        return found

    async def set_machine_status(self, machine_id: str, status: domain.MachineStatus) -> None:
        await self.write(sa.update(machines).where(machines.c.id == machine_id).values(status=status.value))

    async def mark_silent_machines_offline(self, cutoff: float) -> list[str]:
        """Online machines whose last heartbeat is older than cutoff become offline; returns their ids."""
        ids = await self.fetch_column(_SILENT_IDS, {"cutoff": cutoff})
        if ids:
            await self.write(_SILENT_OFFLINE, {"cutoff": cutoff})
        return ids

    # --- machine keys -------------------------------------------------------------------

    async def replace_machine_key(self, machine_id: str, key_id: str, key_hash: str, now: float) -> None:
        """The machine's new active key; the one it had is revoked in the same transaction."""

        async def statements(tx: database.Transaction) -> None:
            await tx.execute(
                sa.update(machine_keys)
                .where(machine_keys.c.machine_id == machine_id, machine_keys.c.revoked_at.is_(None))
                .values(revoked_at=now)
            )
            await tx.execute(
                machine_keys.insert().values(id=key_id, machine_id=machine_id, key_hash=key_hash, created_at=now)
            )

        await self.atomic(statements)

    async def active_machine_key(self, machine_id: str) -> Row | None:
        return await self.fetch_one(_ACTIVE_KEY, {"machine_id": machine_id})

    async def get_machine_key(self, key_id: str) -> Row | None:
        return await self.fetch_one(_KEY.where(machine_keys.c.id == key_id))

    async def list_machine_keys(self, provider_id: int | None = None) -> list[Row]:
        """Never the hashes: what a provider sees of its machines' keys (every machine's, for admins)."""
        query = _KEY.order_by(machine_keys.c.created_at)
        if provider_id is not None:
            query = query.where(machines.c.provider_id == provider_id)
        return await self.fetch_all(query)

    async def revoke_machine_key(self, key_id: str, now: float) -> None:
        await self.write(
            sa.update(machine_keys)
            .where(machine_keys.c.id == key_id, machine_keys.c.revoked_at.is_(None))
            .values(revoked_at=now)
        )


def decode_machine(row: Row) -> Row:
    """A machines row (with the provider's username) as the API's MachinePublic dict."""
    return {
        "id": row["id"],
        "provider_id": row["provider_id"],
        "provider": row["provider"],
        "name": row["name"],
        "status": row["status"],
        "spec": json.loads(row["spec"]),
        "price_per_gpu_hour": row["price_per_gpu_hour"],
        "price_per_cpu_hour": row["price_per_cpu_hour"],
        "registered_at": row["registered_at"],
        "last_heartbeat": row["last_heartbeat"],
        "usage": json.loads(row["usage"]) if row["usage"] else None,
    }
