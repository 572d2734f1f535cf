"""What a machine's reliability is computed from (actors.machines.reputation)."""

import sqlalchemy as sa
from alembic import op

from actors.db.column_types import BigInt, Seconds

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("machines", sa.Column("online_seconds", Seconds, nullable=False, server_default="0"))
    op.add_column("machines", sa.Column("leases_completed", BigInt, nullable=False, server_default="0"))
    op.add_column("machines", sa.Column("leases_lost", BigInt, nullable=False, server_default="0"))
