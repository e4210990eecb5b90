"""Leases: one holder per environment, node and BMC, with heartbeat, expiry and a fencing token.

Rollout statuses gain `interrupted` and `aborted`, node states `ready`, `maintenance` and
`needs-hands` (strings: no schema change for those; provisioner/states.py is their one list).

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "leases",
        sa.Column("key", sa.String(160), primary_key=True),
        sa.Column("holder", sa.String(200), nullable=False),
        sa.Column("purpose", sa.Text, nullable=False),
        sa.Column("token", sa.Integer, nullable=False),
        sa.Column("acquired_at", TZ, nullable=False),
        sa.Column("heartbeat_at", TZ, nullable=False),
        sa.Column("expires_at", TZ, nullable=False),
    )
    op.create_index("ix_leases_expires_at", "leases", ["expires_at"])
    # `apply` looks up the unfinished rollout of an environment on every run
    op.create_index("ix_rollouts_env_status", "rollouts", ["environment", "status"])


def downgrade() -> None:
    op.drop_index("ix_rollouts_env_status", table_name="rollouts")
    op.drop_index("ix_leases_expires_at", table_name="leases")
    op.drop_table("leases")
