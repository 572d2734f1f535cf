"""Per-account quotas an admin set (NULL: the platform's default)."""

import sqlalchemy as sa
from alembic import op

from actors.db.column_types import BigInt, Real, Seconds

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "account_quotas",
        sa.Column("account_id", BigInt, sa.ForeignKey("accounts.id"), primary_key=True, autoincrement=False),
        sa.Column("max_clusters", BigInt),
        sa.Column("max_gpus", BigInt),
        sa.Column("max_cpus", BigInt),
        sa.Column("max_gpu_hours", Real),
        sa.Column("updated_at", Seconds, nullable=False),
        sa.Column("updated_by", sa.Text, nullable=False),
    )
