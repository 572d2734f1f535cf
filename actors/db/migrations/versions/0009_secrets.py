"""Secrets kept in a shared database (PostgreSQL), encrypted (actors.access.platform_secrets)."""

import sqlalchemy as sa
from alembic import op

from actors.db.column_types import Seconds

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "secrets",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("ciphertext", sa.Text, nullable=False),
        sa.Column("created_at", Seconds, nullable=False),
    )
