"""An index of the live boot token of each node.

Tokens are kept after they close (the record of who booted what), so a node gathers one row per
boot. Superseding a node's live token on every boot request must not scan all of them.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_boot_tokens_live", "boot_tokens", ["node"], unique=False,
                    sqlite_where=sa.text("closed_at IS NULL"), postgresql_where=sa.text("closed_at IS NULL"))


def downgrade() -> None:
    op.drop_index("ix_boot_tokens_live", table_name="boot_tokens")
