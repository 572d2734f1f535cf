"""Logs each lease shipped as it closed (they outlive the cluster, up to a retention)."""

import sqlalchemy as sa
from alembic import op

from actors.db.column_types import BigInt, Seconds

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "cluster_logs",
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
        sqlite_autoincrement=True,
    )
    op.create_index("cluster_logs_cluster", "cluster_logs", ["cluster_id", "lease_id", "name"])
