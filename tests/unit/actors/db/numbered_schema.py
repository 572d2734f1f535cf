"""The schema as the numbered migrations built it before Alembic kept the versions (frozen copy): databases that
exist in the field, made here to test that actors.db.migrate adopts and upgrades them."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import asyncpg

# Written in SQLite's spelling; postgres_ddl turned them into PostgreSQL's.
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

_PG_TYPES = [
    (re.compile(r"\bINTEGER\s+PRIMARY\s+KEY\s+AUTOINCREMENT\b", re.I), "BIGSERIAL PRIMARY KEY"),
    (re.compile(r"\bINTEGER\b", re.I), "BIGINT"),
    (re.compile(r"\bREAL\b", re.I), "DOUBLE PRECISION"),
]


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]


def postgres_ddl(statement: str) -> str:
    for pattern, replacement in _PG_TYPES:
        statement = pattern.sub(replacement, statement)
    return statement


def make_sqlite(path: Path, version: int) -> None:
    """A SQLite file at numbered schema version `version`, as the platform before Alembic left it."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN")
        for script in MIGRATIONS[:version]:
            for statement in _statements(script):
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {version}")
        conn.execute("COMMIT")
    finally:
        conn.close()


async def make_postgres(url: str, version: int) -> None:
    """A PostgreSQL database at numbered schema version `version` (its schema_version table)."""
    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction():
            await conn.execute("CREATE TABLE schema_version (version BIGINT NOT NULL)")
            for script in MIGRATIONS[:version]:
                for statement in _statements(script):
                    await conn.execute(postgres_ddl(statement))
            await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", version)
    finally:
        await conn.close()
