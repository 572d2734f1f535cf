"""Buyer clusters, their leases of machines, and their lifecycle events."""

import sqlalchemy as sa
from alembic import op

from actors.db.column_types import BigInt, Real, Seconds

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "clusters",
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
    )
    op.create_index("clusters_owner", "clusters", ["owner_id", "created_at"])
    op.create_index("clusters_status", "clusters", ["status"])
    op.create_table(
        "leases",
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
    )
    op.create_index("leases_cluster", "leases", ["cluster_id"])
    op.create_index("leases_machine_status", "leases", ["machine_id", "status"])
    op.create_table(
        "cluster_events",
        sa.Column("id", BigInt, primary_key=True, autoincrement=True),
        sa.Column("cluster_id", sa.Text, sa.ForeignKey("clusters.id"), nullable=False),
        sa.Column("ts", Seconds, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("cluster_events_cluster", "cluster_events", ["cluster_id", "id"])
