"""Accounts and provider machines."""

import sqlalchemy as sa
from alembic import op

from actors.db.column_types import BigInt, Real, Seconds

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("id", BigInt, primary_key=True, autoincrement=True),
        sa.Column("username", sa.Text, nullable=False, unique=True),
        sa.Column("password_hash", sa.Text, nullable=False),
        sa.Column("role", sa.Text, nullable=False),
        sa.Column("created_at", Seconds, nullable=False),
        sa.CheckConstraint("role IN ('provider', 'buyer', 'admin')"),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "machines",
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
        sa.UniqueConstraint("provider_id", "machine_key"),
    )
    op.create_index("machines_status", "machines", ["status", "gpu_model"])
