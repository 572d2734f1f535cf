"""Per-machine agent keys (only a hash of each secret); at most one active key per machine."""

import sqlalchemy as sa
from alembic import op

from actors.db.column_types import Seconds

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "machine_keys",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("machine_id", sa.Text, sa.ForeignKey("machines.id"), nullable=False),
        sa.Column("key_hash", sa.Text, nullable=False),
        sa.Column("created_at", Seconds, nullable=False),
        sa.Column("revoked_at", Seconds),
    )
    active = sa.text("revoked_at IS NULL")
    op.create_index(
        "machine_keys_active", "machine_keys", ["machine_id"], unique=True, sqlite_where=active, postgresql_where=active
    )
