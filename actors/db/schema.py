"""The platform's tables as the queries see them (SQLAlchemy Core); the migrations build them step by step.

A test (tests/unit/actors/db/test_migrations.py) checks that a database migrated to the newest revision has
exactly these columns and indexes, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import sqlalchemy as sa

from actors.db.column_types import BigInt, Real, Seconds

metadata = sa.MetaData()

accounts = sa.Table(
    "accounts",
    metadata,
    sa.Column("id", BigInt, primary_key=True, autoincrement=True),
    sa.Column("username", sa.Text, nullable=False, unique=True),
    sa.Column("password_hash", sa.Text, nullable=False),
    sa.Column("role", sa.Text, nullable=False),
    sa.Column("created_at", Seconds, nullable=False),
    sa.CheckConstraint("role IN ('provider', 'buyer', 'admin')"),
    sqlite_autoincrement=True,
)

machines = sa.Table(
    "machines",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("provider_id", BigInt, sa.ForeignKey("accounts.id"), nullable=False),
    sa.Column("machine_key", sa.Text, nullable=False),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("spec", sa.Text, nullable=False),
    sa.Column("gpu_model", sa.Text),
    sa.Column("gpus", BigInt, nullable=False),
    sa.Column("cpus", BigInt, nullable=False),
    sa.Column("memory_mb", BigInt, nullable=False),
    sa.Column("price_per_gpu_hour", Real, nullable=False),
    sa.Column("price_per_cpu_hour", Real, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("registered_at", Seconds, nullable=False),
    sa.Column("last_heartbeat", Seconds),
    sa.Column("usage", sa.Text),
    sa.Column("online_seconds", Seconds, nullable=False, server_default="0"),
    sa.Column("leases_completed", BigInt, nullable=False, server_default="0"),
    sa.Column("leases_lost", BigInt, nullable=False, server_default="0"),
    # domain.GpuVerification (NULL: not assessed yet), when checked, what the check saw (JSON), its lease
    sa.Column("gpu_check", sa.Text),
    sa.Column("gpu_checked_at", Seconds),
    sa.Column("gpu_check_detail", sa.Text),
    sa.Column("gpu_check_lease", sa.Text),
    # when what placement reads of it last changed (actors.machines.machine_index reads only those again)
    sa.Column("changed_at", Seconds, nullable=False, server_default="0"),
    # domain.LeaseRuntime: the Ray version and Python minor version a lease runs on it ('' unknown)
    sa.Column("ray_version", sa.Text, nullable=False, server_default=""),
    sa.Column("python_version", sa.Text, nullable=False, server_default=""),
    sa.UniqueConstraint("provider_id", "machine_key"),
    sa.Index("machines_status", "status", "gpu_model"),
    sa.Index("machines_changed", "changed_at"),
    sa.Index("machines_liveness", "status", "last_heartbeat"),
    sa.Index("machines_gpu_check", "gpu_check"),
)

clusters = sa.Table(
    "clusters",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("owner_id", BigInt, sa.ForeignKey("accounts.id"), nullable=False),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("spec", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("reason", sa.Text),
    sa.Column("created_at", Seconds, nullable=False),
    sa.Column("updated_at", Seconds, nullable=False),
    sa.Column("expires_at", Seconds, nullable=False),
    sa.Column("running_at", Seconds),
    sa.Column("ended_at", Seconds),
    sa.Column("ending_as", sa.Text),
    sa.Index("clusters_owner", "owner_id", "created_at"),
    sa.Index("clusters_status", "status"),
)

leases = sa.Table(
    "leases",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("cluster_id", sa.Text, sa.ForeignKey("clusters.id"), nullable=False),
    sa.Column("machine_id", sa.Text, sa.ForeignKey("machines.id"), nullable=False),
    sa.Column("role", sa.Text, nullable=False),
    sa.Column("gpus", sa.Text, nullable=False),
    sa.Column("cpus", BigInt, nullable=False),
    sa.Column("price_per_gpu_hour", Real, nullable=False, server_default="0"),
    sa.Column("price_per_cpu_hour", Real, nullable=False, server_default="0"),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("node_type", sa.Text),
    sa.Column("tags", sa.Text, nullable=False, server_default="{}"),
    sa.Column("ports", sa.Text),
    sa.Column("node_ip", sa.Text),
    sa.Column("created_at", Seconds, nullable=False),
    sa.Column("opened_at", Seconds),
    sa.Column("joined_at", Seconds),
    sa.Column("left_at", Seconds),
    sa.CheckConstraint("role IN ('head', 'worker')"),
    sa.Index("leases_cluster", "cluster_id"),
    sa.Index("leases_machine_status", "machine_id", "status"),
    sa.Index("leases_status", "status", "id"),
)

cluster_events = sa.Table(
    "cluster_events",
    metadata,
    sa.Column("id", BigInt, primary_key=True, autoincrement=True),
    sa.Column("cluster_id", sa.Text, sa.ForeignKey("clusters.id"), nullable=False),
    sa.Column("ts", Seconds, nullable=False),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    sa.Index("cluster_events_cluster", "cluster_id", "id"),
    sqlite_autoincrement=True,
)

account_quotas = sa.Table(
    "account_quotas",
    metadata,
    sa.Column("account_id", BigInt, sa.ForeignKey("accounts.id"), primary_key=True, autoincrement=False),
    sa.Column("max_clusters", BigInt),
    sa.Column("max_gpus", BigInt),
    sa.Column("max_cpus", BigInt),
    sa.Column("max_gpu_hours", Real),
    sa.Column("updated_at", Seconds, nullable=False),
    sa.Column("updated_by", sa.Text, nullable=False),
)

machine_keys = sa.Table(
    "machine_keys",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("machine_id", sa.Text, sa.ForeignKey("machines.id"), nullable=False),
    sa.Column("key_hash", sa.Text, nullable=False),
    sa.Column("created_at", Seconds, nullable=False),
    sa.Column("revoked_at", Seconds),
)
# At most one active key per machine.
sa.Index(
    "machine_keys_active",
    machine_keys.c.machine_id,
    unique=True,
    sqlite_where=machine_keys.c.revoked_at.is_(None),
    postgresql_where=machine_keys.c.revoked_at.is_(None),
)

cluster_logs = sa.Table(
    "cluster_logs",
    metadata,
    sa.Column("id", BigInt, primary_key=True, autoincrement=True),
    sa.Column("cluster_id", sa.Text, sa.ForeignKey("clusters.id"), nullable=False),
    sa.Column("lease_id", sa.Text, nullable=False),
    sa.Column("role", sa.Text, nullable=False),
    sa.Column("machine_id", sa.Text, nullable=False),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("content", sa.Text, nullable=False),
    sa.Column("bytes", BigInt, nullable=False),
    sa.Column("kept_bytes", BigInt, nullable=False),
    sa.Column("truncated", BigInt, nullable=False),
    sa.Column("shipped_at", Seconds, nullable=False),
    sa.Index("cluster_logs_cluster", "cluster_id", "lease_id", "name"),
    sqlite_autoincrement=True,
)

# Secrets kept in a shared database (PostgreSQL), encrypted (actors.access.platform_secrets).
secrets = sa.Table(
    "secrets",
    metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("ciphertext", sa.Text, nullable=False),
    sa.Column("created_at", Seconds, nullable=False),
)
