"""The Ray version and Python minor version a lease runs on each machine (domain.LeaseRuntime), as columns
placement reads (a cluster never spans two); filled for the machines already registered from their spec."""

import sqlalchemy as sa
from alembic import op

from dcl_core import domain

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("machines", sa.Column("ray_version", sa.Text, nullable=False, server_default=""))
    op.add_column("machines", sa.Column("python_version", sa.Text, nullable=False, server_default=""))
    machines = sa.table(
        "machines", sa.column("id"), sa.column("spec"), sa.column("ray_version"), sa.column("python_version")
    )
    conn = op.get_bind()
    for machine_id, spec in conn.execute(sa.select(machines.c.id, machines.c.spec)).all():
        try:
            runtime = domain.MachineSpec.model_validate_json(spec).lease_runtime
        except ValueError:
            continue  # an unreadable spec stays unknown until the agent registers again
        conn.execute(
            sa.update(machines)
            .where(machines.c.id == machine_id)
            .values(ray_version=runtime.ray, python_version=runtime.python)
        )
