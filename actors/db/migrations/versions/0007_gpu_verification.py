"""Whether a machine's GPUs are as it claims (domain.GpuVerification; NULL: not assessed yet, the ClusterManager
assesses it when it starts), when it was checked, what the check saw (JSON), and the check lease while one runs."""

import sqlalchemy as sa
from alembic import op

from actors.db.column_types import Seconds

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("machines", sa.Column("gpu_check", sa.Text))
    op.add_column("machines", sa.Column("gpu_checked_at", Seconds))
    op.add_column("machines", sa.Column("gpu_check_detail", sa.Text))
    op.add_column("machines", sa.Column("gpu_check_lease", sa.Text))
