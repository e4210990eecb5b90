"""Boot tokens for node callbacks, and the node event log.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "boot_tokens",
        sa.Column("token_sha256", sa.String(64), primary_key=True),
        sa.Column("node", sa.String(64), nullable=False, index=True),
        sa.Column("release_id", sa.String(64)),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("issued_at", TZ, nullable=False),
        sa.Column("closed_at", TZ),
        sa.Column("closed_by", sa.String(32)),
    )
    op.create_table(
        "node_events",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("node", sa.String(64), nullable=False, index=True),
        sa.Column("at", TZ, nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("details", sa.JSON, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("node_events")
    op.drop_table("boot_tokens")
