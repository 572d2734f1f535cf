"""The platform's database: SQLite (aiosqlite, WAL) by default or PostgreSQL; migrations and every query."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Protocol, TypeVar

import aiosqlite

from actors.db import sql_dialect, store_postgres
from dcl_core import database_url, domain, errors, secret_files

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Transaction(Protocol):
    """One open transaction, in SQLite's `?` spelling on either backend."""

    async def execute(self, sql: str, args: Sequence = ()) -> int: ...

    async def executemany(self, sql: str, rows: Sequence[Sequence]) -> None: ...


# Each entry moves the schema one version up; never edit a released entry, append a new one.
# Written in SQLite's spelling; sql_dialect turns them into PostgreSQL's (one version for both).
MIGRATIONS: list[str] = [
    # 1: accounts and provider machines
    """
    CREATE TABLE accounts (
        id            INTEGER PRIMARY KEY AUTOINCREMENT,
        username      TEXT NOT NULL UNIQUE,
        password_hash TEXT NOT NULL,
        role          TEXT NOT NULL CHECK (role IN ('provider', 'buyer', 'admin')),
        created_at    REAL NOT NULL
    );
    CREATE TABLE machines (
        id                 TEXT PRIMARY KEY,
        provider_id        INTEGER NOT NULL REFERENCES accounts(id),
        machine_key        TEXT NOT NULL,
        name               TEXT NOT NULL,
        spec               TEXT NOT NULL,
        gpu_model          TEXT,
        gpus               INTEGER NOT NULL,
        cpus               INTEGER NOT NULL,
        memory_mb          INTEGER NOT NULL,
        price_per_gpu_hour REAL NOT NULL,
        price_per_cpu_hour REAL NOT NULL,
        status             TEXT NOT NULL,
        registered_at      REAL NOT NULL,
        last_heartbeat     REAL,
        usage              TEXT,
        UNIQUE (provider_id, machine_key)
    );
    CREATE INDEX machines_status ON machines(status, gpu_model);
    """,
    # 2: buyer clusters, their leases of machines, and their lifecycle events
    """
    CREATE TABLE clusters (
        id          TEXT PRIMARY KEY,
        owner_id    INTEGER NOT NULL REFERENCES accounts(id),
        name        TEXT NOT NULL,
        spec        TEXT NOT NULL,
        status      TEXT NOT NULL,
        reason      TEXT,
        created_at  REAL NOT NULL,
        updated_at  REAL NOT NULL,
        expires_at  REAL NOT NULL,
        running_at  REAL,
        ended_at    REAL,
        ending_as   TEXT
    );
    CREATE INDEX clusters_owner ON clusters(owner_id, created_at);
    CREATE INDEX clusters_status ON clusters(status);
    CREATE TABLE leases (
        id          TEXT PRIMARY KEY,
        cluster_id  TEXT NOT NULL REFERENCES clusters(id),
        machine_id  TEXT NOT NULL REFERENCES machines(id),
        role        TEXT NOT NULL CHECK (role IN ('head', 'worker')),
        gpus        TEXT NOT NULL,
        cpus        INTEGER NOT NULL,
        price_per_gpu_hour REAL NOT NULL DEFAULT 0,
        price_per_cpu_hour REAL NOT NULL DEFAULT 0,
        status      TEXT NOT NULL,
        node_type   TEXT,
        tags        TEXT NOT NULL DEFAULT '{}',
        ports       TEXT,
        node_ip     TEXT,
        created_at  REAL NOT NULL,
        opened_at   REAL,
        joined_at   REAL,
        left_at     REAL
    );
    CREATE INDEX leases_cluster ON leases(cluster_id);
    CREATE INDEX leases_machine_status ON leases(machine_id, status);
    CREATE TABLE cluster_events (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        cluster_id  TEXT NOT NULL REFERENCES clusters(id),
        ts          REAL NOT NULL,
        kind        TEXT NOT NULL,
        message     TEXT NOT NULL
    );
    CREATE INDEX cluster_events_cluster ON cluster_events(cluster_id, id);
    """,
    # 3: per-account quotas an admin set (NULL: the platform's default)
    """
    CREATE TABLE account_quotas (
        account_id    INTEGER PRIMARY KEY REFERENCES accounts(id),
        max_clusters  INTEGER,
        max_gpus      INTEGER,
        max_cpus      INTEGER,
        max_gpu_hours REAL,
        updated_at    REAL NOT NULL,
        updated_by    TEXT NOT NULL
    );
    """,
    # 4: per-machine agent keys (only a hash of each secret); at most one active key per machine
    """
    CREATE TABLE machine_keys (
        id          TEXT PRIMARY KEY,
        machine_id  TEXT NOT NULL REFERENCES machines(id),
        key_hash    TEXT NOT NULL,
        created_at  REAL NOT NULL,
        revoked_at  REAL
    );
    CREATE UNIQUE INDEX machine_keys_active ON machine_keys(machine_id) WHERE revoked_at IS NULL;
    """,
    # 5: logs each lease shipped as it closed (they outlive the cluster, up to a retention)
    """
    CREATE TABLE cluster_logs (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        cluster_id  TEXT NOT NULL REFERENCES clusters(id),
        lease_id    TEXT NOT NULL,
        role        TEXT NOT NULL,
        machine_id  TEXT NOT NULL,
        name        TEXT NOT NULL,
        content     TEXT NOT NULL,
        bytes       INTEGER NOT NULL,
        kept_bytes  INTEGER NOT NULL,
        truncated   INTEGER NOT NULL,
        shipped_at  REAL NOT NULL
    );
    CREATE INDEX cluster_logs_cluster ON cluster_logs(cluster_id, lease_id, name);
    """,
    # 6: what a machine's reliability is computed from (actors.machines.reputation)
    """
    ALTER TABLE machines ADD COLUMN online_seconds REAL NOT NULL DEFAULT 0;
    ALTER TABLE machines ADD COLUMN leases_completed INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE machines ADD COLUMN leases_lost INTEGER NOT NULL DEFAULT 0;
    """,
    # 7: whether a machine's GPUs are as it claims (domain.GpuVerification; NULL: not assessed yet, the
    # ClusterManager assesses it when it starts), when it was checked, what the check saw (JSON), and
    # the check lease while one runs
    """
    ALTER TABLE machines ADD COLUMN gpu_check TEXT;
    ALTER TABLE machines ADD COLUMN gpu_checked_at REAL;
    ALTER TABLE machines ADD COLUMN gpu_check_detail TEXT;
    ALTER TABLE machines ADD COLUMN gpu_check_lease TEXT;
    """,
    # 8: when what placement reads of a machine last changed (registration, a node ended on it), so that the
    # ClusterManager's machine index reads only those rows again (actors.machines.machine_index); and what it reads at
    # every placement, from indexes alone: the machines not online or held by a GPU check, the ids of the leases
    # holding capacity
    """
    ALTER TABLE machines ADD COLUMN changed_at REAL NOT NULL DEFAULT 0;
    CREATE INDEX machines_changed ON machines(changed_at);
    CREATE INDEX machines_liveness ON machines(status, last_heartbeat);
    CREATE INDEX leases_status ON leases(status, id);
    CREATE INDEX machines_gpu_check ON machines(gpu_check);
    """,
    # 9: secrets kept in a shared database (PostgreSQL), encrypted (actors.access.platform_secrets)
    """
    CREATE TABLE secrets (
        name        TEXT PRIMARY KEY,
        ciphertext  TEXT NOT NULL,
        created_at  REAL NOT NULL
    );
    """,
]


def is_busy(exc: BaseException) -> bool:
    """The database could not take a lock in time, or refused for now (SQLite: another connection held
    its lock past the busy timeout; PostgreSQL: a lock, a serialization conflict, too many connections):
    nothing was written, and the same request can be retried in a moment."""
    if isinstance(exc, sqlite3.OperationalError):
        return "locked" in str(exc) or "busy" in str(exc)
    return store_postgres.is_busy(exc)


# How long a write may wait, by default, for SQLite's write lock (held by another process, or by this
# process's earlier writes) before it gives up with a "busy" error (the API's 503 with Retry-After).
WRITE_LOCK_WAIT_S = 30.0
# SQLite's own busy handler waits at most this long per attempt; a write's deadline (not the
# connection's busy timeout) decides when it gives up, so a caller can ask for a shorter wait.
_BUSY_POLL_S = 0.25


class _SqliteTransaction:
    """What a store's multi-statement transaction sees (the same methods as PostgreSQL's)."""

    def __init__(self, conn: aiosqlite.Connection):
        self._conn = conn

    async def execute(self, sql: str, args: Sequence = ()) -> int:
        return (await self._conn.execute(sql, args)).rowcount

    async def executemany(self, sql: str, rows: Sequence[Sequence]) -> None:
        await self._conn.executemany(sql, rows)

    async def fetchone(self, sql: str, args: Sequence = ()) -> dict | None:
        row = await (await self._conn.execute(sql, args)).fetchone()
        return dict(row) if row is not None else None


async def _acquire_by(lock: asyncio.Lock, deadline: float) -> bool:
    """Takes the lock unless the loop's clock passes deadline first (asyncio.wait_for on
    Lock.acquire can lose a lock granted as the timeout fires, before Python 3.12)."""
    acquire = asyncio.ensure_future(lock.acquire())
    await asyncio.wait({acquire}, timeout=max(0.0, deadline - asyncio.get_running_loop().time()))
    if not acquire.done():
        acquire.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await acquire
    if acquire.cancelled():
        return False
    return acquire.result()


def _locked(waited_s: float, why: str) -> sqlite3.OperationalError:
    return sqlite3.OperationalError(f"database is locked: waited {waited_s:.1f} s for {why}")


class SqliteBackend:
    """Two connections to the database file (WAL): one writes, one transaction at a time; the other
    reads. aiosqlite runs each connection's statements one by one in a thread of its own, so a write
    waiting for SQLite's lock (another process holds it) would hold up every read queued behind it
    on the same connection; on the reader they go on, since WAL readers never wait for a writer."""

    name = sql_dialect.SQLITE
    integrity_errors: tuple[type[BaseException], ...] = (sqlite3.IntegrityError,)

    def __init__(self, path: Path, migrations: Sequence[str]):
        self.path = Path(path)
        self._migrations = list(migrations)
        self._conn: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._write_lock = asyncio.Lock()  # one transaction at a time on the shared connection

    def describe(self) -> str:
        return str(self.path)

    async def open(self) -> aiosqlite.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = await aiosqlite.connect(self.path, timeout=WRITE_LOCK_WAIT_S)  # migrations wait their turn
        reader = None
        try:
            conn.row_factory = aiosqlite.Row
            await conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: a commit survives a process crash; only an OS crash may lose the last ones.
            await conn.execute("PRAGMA synchronous=NORMAL")
            await conn.execute("PRAGMA foreign_keys=ON")
            await self._migrate(conn)
            await conn.execute(f"PRAGMA busy_timeout = {int(_BUSY_POLL_S * 1000)}")
            reader = await aiosqlite.connect(self.path, timeout=WRITE_LOCK_WAIT_S)
            reader.row_factory = aiosqlite.Row
            await reader.execute("PRAGMA query_only=ON")
        except BaseException:
            for c in (conn, reader):
                if c is not None:
                    await c.close()  # the next call opens afresh
            raise
        # The WAL and shared-memory files hold the same data as the database: owner-only too.
        for path in (
            self.path,
            self.path.with_name(self.path.name + "-wal"),
            self.path.with_name(self.path.name + "-shm"),
        ):
            if path.exists():
                secret_files.restrict_to_owner(path)
        self._conn, self._reader = conn, reader
        return conn

    async def _migrate(self, conn: aiosqlite.Connection) -> None:
        await conn.execute("BEGIN IMMEDIATE")  # serialises migrations across processes
        try:
            (version,) = await (await conn.execute("PRAGMA user_version")).fetchone()
            for target, script in enumerate(self._migrations[version:], start=version + 1):
                logger.info("migrating %s to schema version %d", self.path, target)
                for statement in sql_dialect.statements(script):
                    await conn.execute(statement)
                await conn.execute(f"PRAGMA user_version = {target}")
            await conn.commit()
        except BaseException:
            await conn.rollback()
            raise

    async def schema_version(self) -> int:
        (version,) = await (await self._conn.execute("PRAGMA user_version")).fetchone()
        return version

    async def close(self) -> None:
        if self._conn is not None:
            conn, reader, self._conn, self._reader = self._conn, self._reader, None, None
            await reader.close()
            await conn.close()

    # Cursors are closed at once: a statement left open would keep the reader's snapshot, and every
    # later read would miss what was committed since.
    async def fetchone(self, sql: str, args: Sequence = ()) -> dict | None:
        async with self._reader.execute(sql, args) as cursor:
            row = await cursor.fetchone()
        return dict(row) if row else None

    async def fetchall(self, sql: str, args: Sequence = ()) -> list[dict]:
        async with self._reader.execute(sql, args) as cursor:
            return [dict(r) for r in await cursor.fetchall()]

    async def fetchcolumn(self, sql: str, args: Sequence = ()) -> list:
        async with self._reader.execute(sql, args) as cursor:
            return [r[0] for r in await cursor.fetchall()]

    async def atomic(
        self, statements: Callable[[_SqliteTransaction], Awaitable[T]], lock_wait_s: float | None = None
    ) -> T:
        """Shielded: a caller cancelled half-way (an HTTP client that hung up, a cancelled actor call)
        must never leave a transaction open: it would hold SQLite's write lock and stall every other
        writer (heartbeats included) until the next commit on this connection.

        Waits at most lock_wait_s (WRITE_LOCK_WAIT_S by default) in all: for this process's earlier
        writes, then for SQLite's lock; past it, a "database is locked" error and nothing written."""
        conn = self._conn
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (WRITE_LOCK_WAIT_S if lock_wait_s is None else lock_wait_s)

        async def attempt() -> T:
            try:
                result = await statements(_SqliteTransaction(conn))
                await conn.commit()
                return result
            except BaseException:
                await conn.rollback()
                raise

        async def run() -> T:
            started = loop.time()
            if not await _acquire_by(self._write_lock, deadline):
                raise _locked(loop.time() - started, "this process's earlier writes")
            try:
                while True:  # SQLite's busy handler waited _BUSY_POLL_S: again, until the deadline
                    try:
                        return await attempt()
                    except sqlite3.OperationalError as exc:
                        if not is_busy(exc) or loop.time() >= deadline:
                            raise
            finally:
                self._write_lock.release()

        return await asyncio.shield(run())

    @contextlib.asynccontextmanager
    async def exclusive(self, key: int) -> AsyncIterator[None]:
        """Nothing more to take: one process (the ClusterManager actor) places on a SQLite file, and
        Database.serial's in-process lock serialises it. A write transaction held across the section
        would stall every other writer (heartbeats) for its length."""
        yield


class Serial:
    """`async with` it: one holder at a time, in this process and, on PostgreSQL, in every process
    that shares the database. Reusable, not reentrant (like asyncio.Lock)."""

    def __init__(self, exclusive: Callable[[int], contextlib.AbstractAsyncContextManager], key: int):
        self._exclusive, self._key = exclusive, key
        self._local = asyncio.Lock()
        self._held: contextlib.AbstractAsyncContextManager | None = None

    async def __aenter__(self) -> None:
        await self._local.acquire()
        try:
            held = self._exclusive(self._key)
            await held.__aenter__()
        except BaseException:
            self._local.release()
            raise
        self._held = held

    async def __aexit__(self, *exc_info) -> bool | None:
        held, self._held = self._held, None
        try:
            return await held.__aexit__(*exc_info)
        finally:
            self._local.release()


class Database:
    """The platform's database, opened (and migrated) lazily on first use: a SQLite file (the
    default: embedded, nothing to set up) or, given a `postgresql://` URL, a PostgreSQL database
    (a platform on several machines). Same migrations, schema version and transactions on both."""

    def __init__(self, location: Path | str, *, migrations: Sequence[str] = MIGRATIONS):
        if database_url.is_postgres_url(location):
            self._backend = store_postgres.PostgresBackend(location, migrations)
        else:
            self._backend = SqliteBackend(Path(location), migrations)
        self._handle = None
        self._lock = asyncio.Lock()
        self._placement: Serial | None = None

    @property
    def backend(self) -> str:
        """sql_dialect.SQLITE or sql_dialect.POSTGRESQL."""
        return self._backend.name

    async def conn(self):
        """Opens the database on first use; the driver's handle: an aiosqlite connection or an asyncpg pool."""
        if self._handle is None:
            async with self._lock:
                if self._handle is None:
                    self._handle = await self._backend.open()
        return self._handle

    async def schema_version(self) -> int:
        await self.conn()
        return await self._backend.schema_version()

    async def close(self) -> None:
        if self._handle is not None:
            self._handle = None
            await self._backend.close()

    def placement_lock(self) -> Serial:
        """The lock every decide-then-reserve of machines holds (placement's reads, its checks and the
        reservation's writes), so no machine is leased twice, whatever processes share the database."""
        if self._placement is None:
            self._placement = Serial(self._exclusive, sql_dialect.PLACEMENT_LOCK)
        return self._placement

    @contextlib.asynccontextmanager
    async def _exclusive(self, key: int) -> AsyncIterator[None]:
        await self.conn()
        async with self._backend.exclusive(key):
            yield

    async def _fetchone(self, sql: str, args: Sequence = ()) -> dict | None:
        await self.conn()
        return await self._backend.fetchone(sql, args)

    async def _fetchall(self, sql: str, args: Sequence = ()) -> list[dict]:
        await self.conn()
        return await self._backend.fetchall(sql, args)

    async def _fetchcolumn(self, sql: str, args: Sequence = ()) -> list:
        """The first column of every row (no dict per row: for long lists of ids)."""
        await self.conn()
        return await self._backend.fetchcolumn(sql, args)

    async def _write(self, sql: str, args: Sequence = (), lock_wait_s: float | None = None) -> int:
        """One statement in a transaction of its own; returns the rows it changed."""
        return await self._atomic(lambda tx: tx.execute(sql, args), lock_wait_s)

    async def _atomic(self, statements: Callable[[Transaction], Awaitable[T]], lock_wait_s: float | None = None) -> T:
        """Runs statements(tx) and commits, or rolls back, as one transaction; tx.execute(sql, args)
        and tx.executemany(sql, rows) take SQLite's `?` spelling on both backends. lock_wait_s bounds
        how long it waits for locks before it fails "busy" (store.is_busy): None, the backend's default."""
        await self.conn()
        return await self._backend.atomic(statements, lock_wait_s)


class Store(Database):
    """The ProviderRegistry's queries: accounts and machines."""

    # --- accounts -----------------------------------------------------------------------

    async def create_account(self, username: str, password_hash: str, role: domain.Role, now: float) -> dict:
        try:
            await self._write(
                "INSERT INTO accounts (username, password_hash, role, created_at) VALUES (?, ?, ?, ?)",
                (username, password_hash, role.value, now),
            )
        except self._backend.integrity_errors:  # rolled back already
            raise errors.Conflict(f"username '{username}' is already taken", username=username) from None
        return await self.get_account_by_username(username)

    async def get_account(self, account_id: int) -> dict | None:
        return await self._fetchone("SELECT * FROM accounts WHERE id = ?", (account_id,))

    async def get_account_by_username(self, username: str) -> dict | None:
        return await self._fetchone("SELECT * FROM accounts WHERE username = ?", (username,))

    async def list_accounts(self) -> list[dict]:
        return await self._fetchall("SELECT * FROM accounts ORDER BY id")

    async def count_accounts(self, role: domain.Role) -> int:
        row = await self._fetchone("SELECT COUNT(*) AS n FROM accounts WHERE role = ?", (role.value,))
        return row["n"]

    # --- machines -----------------------------------------------------------------------

    _MACHINE_SELECT = "SELECT m.*, a.username AS provider FROM machines m JOIN accounts a ON a.id = m.provider_id"

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
    ) -> dict:
        """Insert, or refresh the machine this provider registered earlier with the same key.
        gpu_check: its new GPU verification status and detail (JSON), in the same statement (None: unchanged;
        a check in flight is then forgotten: its outcome no longer applies)."""
        status, detail = (gpu_check[0].value, gpu_check[1]) if gpu_check else (None, None)
        kept = "CASE WHEN excluded.gpu_check IS NULL THEN machines.{0} ELSE excluded.{0} END"
        await self._write(
            """INSERT INTO machines (id, provider_id, machine_key, name, spec, gpu_model, gpus, cpus,
                   memory_mb, price_per_gpu_hour, price_per_cpu_hour, status, registered_at, last_heartbeat,
                   gpu_check, gpu_check_detail, changed_at)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
               ON CONFLICT (provider_id, machine_key) DO UPDATE SET
                   name = excluded.name, spec = excluded.spec, gpu_model = excluded.gpu_model,
                   gpus = excluded.gpus, cpus = excluded.cpus, memory_mb = excluded.memory_mb,
                   price_per_gpu_hour = excluded.price_per_gpu_hour,
                   price_per_cpu_hour = excluded.price_per_cpu_hour,
                   status = excluded.status, last_heartbeat = excluded.last_heartbeat,
                   changed_at = excluded.changed_at, gpu_check = COALESCE(excluded.gpu_check, machines.gpu_check), """
            f"gpu_check_detail = {kept.format('gpu_check_detail')}, gpu_checked_at = {kept.format('gpu_checked_at')}, "
            f"gpu_check_lease = {kept.format('gpu_check_lease')}",
            (
                machine_id,
                provider_id,
                machine_key,
                name,
                spec.model_dump_json(),
                spec.gpu_model,
                len(spec.gpus),
                spec.cpus,
                spec.memory_mb,
                price_per_gpu_hour,
                price_per_cpu_hour,
                domain.MachineStatus.ONLINE.value,
                now,
                now,
                status,
                detail,
                now,
            ),
        )
        return await self._fetchone(
            self._MACHINE_SELECT + " WHERE m.provider_id = ? AND m.machine_key = ?", (provider_id, machine_key)
        )

    async def get_machine_by_key(self, provider_id: int, machine_key: str) -> dict | None:
        return await self._fetchone(
            self._MACHINE_SELECT + " WHERE m.provider_id = ? AND m.machine_key = ?", (provider_id, machine_key)
        )

    async def get_machine(self, machine_id: str) -> dict | None:
        return await self._fetchone(self._MACHINE_SELECT + " WHERE m.id = ?", (machine_id,))

    async def list_machines(self, provider_id: int | None = None) -> list[dict]:
        if provider_id is None:
            return await self._fetchall(self._MACHINE_SELECT + " ORDER BY m.registered_at")
        return await self._fetchall(
            self._MACHINE_SELECT + " WHERE m.provider_id = ? ORDER BY m.registered_at", (provider_id,)
        )

    async def list_machines_by_status(self, status: domain.MachineStatus) -> list[dict]:
        return await self._fetchall(self._MACHINE_SELECT + " WHERE m.status = ?", (status.value,))

    async def count_online_by_gpu_model(self, cutoff: float) -> dict[str | None, int]:
        """Online machines per GPU model (None: CPU-only), counted by the database: the gauge the sweeper
        refreshes every few seconds must not read every row into the registry's event loop."""
        rows = await self._fetchall(
            "SELECT CASE WHEN gpus > 0 THEN gpu_model END AS model, COUNT(*) AS machines"
            f" FROM machines WHERE {online_where()} GROUP BY 1",
            (cutoff,),
        )
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
        heartbeat of at most online_within_s counts as time online; lock_wait_s as in Database._atomic."""
        online = domain.MachineStatus.ONLINE.value
        rows = [
            (now, online_within_s, now, now, usage.model_dump_json(), online, machine_id) for machine_id, usage in beats
        ]
        await self._atomic(
            lambda tx: tx.executemany(
                "UPDATE machines SET online_seconds = online_seconds + CASE WHEN last_heartbeat IS NOT NULL"
                " AND ? - last_heartbeat BETWEEN 0 AND ? THEN ? - last_heartbeat ELSE 0 END,"
                " last_heartbeat = ?, usage = ?, status = ? WHERE id = ?",
                rows,
            ),
            lock_wait_s,
        )

    async def get_machines(self, machine_ids: Sequence[str]) -> dict[str, dict]:
        """The machines of these ids that exist, by id (one query)."""
        if not machine_ids:
            return {}
        unique = sorted(set(machine_ids))
        rows = await self._fetchall(self._MACHINE_SELECT + f" WHERE m.id IN ({','.join('?' * len(unique))})", unique)
        return {r["id"]: r for r in rows}

    async def live_lease_ids(self, machine_id: str) -> set[str]:
        """Leases on the machine that still hold capacity (the leases table is the ClusterManager's), and
        its GPU check lease while one runs."""
        live = tuple(st.value for st in domain.LeaseStatus if st.holds_capacity())
        rows = await self._fetchall(
            f"SELECT id FROM leases WHERE machine_id = ? AND status IN ({','.join('?' * len(live))})"
            " UNION SELECT gpu_check_lease AS id FROM machines WHERE id = ? AND gpu_check = ?",
            (machine_id, *live, machine_id, domain.GpuVerification.CHECKING.value),
        )
        return {r["id"] for r in rows if r["id"]}

    async def set_machine_status(self, machine_id: str, status: domain.MachineStatus) -> None:
        await self._write("UPDATE machines SET status = ? WHERE id = ?", (status.value, machine_id))

    async def mark_silent_machines_offline(self, cutoff: float) -> list[str]:
        """Online machines whose last heartbeat is older than cutoff become offline; returns their ids."""
        silent = f"status = '{domain.MachineStatus.ONLINE.value}' AND NOT ({online_where()})"
        rows = await self._fetchall(f"SELECT id FROM machines WHERE {silent}", (cutoff,))
        if rows:
            await self._write(
                f"UPDATE machines SET status = ? WHERE {silent}", (domain.MachineStatus.OFFLINE.value, cutoff)
            )
        return [r["id"] for r in rows]

    # --- machine keys -------------------------------------------------------------------

    async def replace_machine_key(self, machine_id: str, key_id: str, key_hash: str, now: float) -> None:
        """The machine's new active key; the one it had is revoked in the same transaction."""

        async def statements(conn):
            await conn.execute(
                "UPDATE machine_keys SET revoked_at = ? WHERE machine_id = ? AND revoked_at IS NULL", (now, machine_id)
            )
            await conn.execute(
                "INSERT INTO machine_keys (id, machine_id, key_hash, created_at) VALUES (?, ?, ?, ?)",
                (key_id, machine_id, key_hash, now),
            )

        await self._atomic(statements)

    async def active_machine_key(self, machine_id: str) -> dict | None:
        return await self._fetchone(
            "SELECT * FROM machine_keys WHERE machine_id = ? AND revoked_at IS NULL", (machine_id,)
        )

    _KEY_SELECT = (
        "SELECT k.id, k.machine_id, k.created_at, k.revoked_at, m.name AS machine_name, m.provider_id "
        "FROM machine_keys k JOIN machines m ON m.id = k.machine_id"
    )

    async def get_machine_key(self, key_id: str) -> dict | None:
        return await self._fetchone(self._KEY_SELECT + " WHERE k.id = ?", (key_id,))

    async def list_machine_keys(self, provider_id: int | None = None) -> list[dict]:
        """Never the hashes: what a provider sees of its machines' keys (every machine's, for admins)."""
        if provider_id is None:
            return await self._fetchall(self._KEY_SELECT + " ORDER BY k.created_at")
        return await self._fetchall(self._KEY_SELECT + " WHERE m.provider_id = ? ORDER BY k.created_at", (provider_id,))

    async def revoke_machine_key(self, key_id: str, now: float) -> None:
        await self._write("UPDATE machine_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (now, key_id))


def online_where(alias: str = "machines") -> str:
    """The online rule (dcl_core.domain.MachineStatus.effective) as SQL over a machines row; one `?` takes
    the cutoff (now - PlatformSettings.offline_after_s)."""
    return f"{alias}.status = '{domain.MachineStatus.ONLINE.value}' AND {alias}.last_heartbeat >= ?"


def not_online_ids_sql(alias: str = "machines") -> str:
    """The ids of the machines online_where leaves out (a machine never heard from included), as index range
    reads (machines_liveness) rather than a scan of every machine; one `?` takes the cutoff."""
    others = ", ".join(f"'{s.value}'" for s in domain.MachineStatus if s is not domain.MachineStatus.ONLINE)
    online = f"SELECT {alias}.id FROM machines {alias} WHERE {alias}.status = '{domain.MachineStatus.ONLINE.value}' AND"
    return (
        f"SELECT {alias}.id FROM machines {alias} WHERE {alias}.status IN ({others})"
        f" UNION ALL {online} {alias}.last_heartbeat < ? UNION ALL {online} {alias}.last_heartbeat IS NULL"
    )


def decode_machine(row: dict) -> dict:
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
