"""Rollout workers: a node's finished steps are read by (rollout, node) when a worker claims it.

Revision ID: 0009
Revises: 0007
"""

from alembic import op

revision = "0009"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_rollout_steps_rollout_node", "rollout_steps", ["rollout_id", "node"])


def downgrade() -> None:
    op.drop_index("ix_rollout_steps_rollout_node", table_name="rollout_steps")
