"""Boot tokens bound to one expected boot: who opened it, its images, a report count; one live per node.

The token itself is derived (HMAC of a per-store key and the boot's id) so that fetching the boot
script again hands out the same token without the store keeping tokens. Node events get an index
on their time so the retention policy prunes without a scan.

Revision ID: 0006
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for column in (sa.Column("boot_id", sa.String(32)), sa.Column("opened_by", sa.String(16)),
                   sa.Column("images", sa.JSON), sa.Column("reports", sa.Integer)):
        op.add_column("boot_tokens", column)  # plain ALTER TABLE ADD COLUMN, also on SQLite
    # tokens issued before this revision cannot be handed out again: close them (nodes boot anew)
    op.execute("UPDATE boot_tokens SET closed_at = issued_at, closed_by = 'superseded' WHERE closed_at IS NULL")
    op.drop_index("ix_boot_tokens_live", table_name="boot_tokens")
    op.create_index("ix_boot_tokens_live", "boot_tokens", ["node"], unique=True,
                    sqlite_where=sa.text("closed_at IS NULL"), postgresql_where=sa.text("closed_at IS NULL"))
    op.create_index("ix_node_events_at", "node_events", ["at"])


def downgrade() -> None:
    op.drop_index("ix_node_events_at", table_name="node_events")
    op.drop_index("ix_boot_tokens_live", table_name="boot_tokens")
    op.create_index("ix_boot_tokens_live", "boot_tokens", ["node"], unique=False,
                    sqlite_where=sa.text("closed_at IS NULL"), postgresql_where=sa.text("closed_at IS NULL"))
    with op.batch_alter_table("boot_tokens") as b:
        for c in ("reports", "images", "opened_by", "boot_id"):
            b.drop_column(c)
