"""When what placement reads of a machine last changed (registration, a node ended on it), so that the
ClusterManager's machine index reads only those rows again (actors.machines.machine_index); and what it reads at
every placement, from indexes alone: the machines not online or held by a GPU check, the ids of the leases
holding capacity."""

import sqlalchemy as sa
from alembic import op

from actors.db.column_types import Seconds

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("machines", sa.Column("changed_at", Seconds, nullable=False, server_default="0"))
    op.create_index("machines_changed", "machines", ["changed_at"])
    op.create_index("machines_liveness", "machines", ["status", "last_heartbeat"])
    op.create_index("leases_status", "leases", ["status", "id"])
    op.create_index("machines_gpu_check", "machines", ["gpu_check"])
