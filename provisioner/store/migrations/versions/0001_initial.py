"""Initial schema: releases, environments and their history, nodes, approvals, blocks, audit log.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "releases",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("document", sa.Text, nullable=False),
        sa.Column("author", sa.String(128), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("parent_id", sa.String(64)),
    )
    op.create_table(
        "environments",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("release_id", sa.String(64), sa.ForeignKey("releases.id")),
        sa.Column("updated_at", TZ, nullable=False),
    )
    op.create_table(
        "environment_history",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("environment", sa.String(64), nullable=False, index=True),
        sa.Column("release_id", sa.String(64), sa.ForeignKey("releases.id"), nullable=False),
        sa.Column("previous_id", sa.String(64)),
        sa.Column("at", TZ, nullable=False),
        sa.Column("by", sa.String(128), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
    )
    op.create_table(
        "nodes",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("rack", sa.String(64), nullable=False),
        sa.Column("model", sa.String(64), nullable=False),
        sa.Column("environment", sa.String(64), nullable=False, index=True),
        sa.Column("macs", sa.JSON, nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("state_reason", sa.Text, nullable=False),
        sa.Column("release_id", sa.String(64)),
        sa.Column("observed", sa.JSON, nullable=False),
        sa.Column("observed_at", TZ),
        sa.Column("installed_release", sa.String(64)),
        sa.Column("healthy_since", TZ),
        sa.Column("updated_at", TZ, nullable=False),
    )
    op.create_table(
        "approvals",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("release_id", sa.String(64), sa.ForeignKey("releases.id"), nullable=False, index=True),
        sa.Column("approver", sa.String(128), nullable=False),
        sa.Column("at", TZ, nullable=False),
        sa.Column("comment", sa.Text, nullable=False),
        sa.UniqueConstraint("release_id", "approver"),
    )
    op.create_table(
        "blocked_versions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("model", sa.String(64)),
        sa.Column("component", sa.String(32), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("incident", sa.String(64)),
        sa.Column("by", sa.String(128), nullable=False),
        sa.Column("at", TZ, nullable=False),
        sa.Column("unblocked_by", sa.String(128)),
        sa.Column("unblocked_at", TZ),
    )
    op.create_table(
        "audit_log",
        sa.Column("seq", sa.Integer, primary_key=True),
        sa.Column("at", TZ, nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("action", sa.String(64), nullable=False, index=True),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("details", sa.JSON, nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.create_table(
        "meta",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )
    # Releases are immutable: the database itself refuses to change or remove one.
    if op.get_bind().dialect.name == "sqlite":
        op.execute("CREATE TRIGGER releases_no_update BEFORE UPDATE ON releases "
                   "BEGIN SELECT RAISE(ABORT, 'releases are immutable'); END")
        op.execute("CREATE TRIGGER releases_no_delete BEFORE DELETE ON releases "
                   "BEGIN SELECT RAISE(ABORT, 'releases are immutable'); END")
    elif op.get_bind().dialect.name == "postgresql":
        op.execute("CREATE FUNCTION releases_immutable() RETURNS trigger AS $$ BEGIN "
                   "RAISE EXCEPTION 'releases are immutable'; END $$ LANGUAGE plpgsql")
        op.execute("CREATE TRIGGER releases_immutable BEFORE UPDATE OR DELETE ON releases "
                   "FOR EACH ROW EXECUTE FUNCTION releases_immutable()")


def downgrade() -> None:
    for t in ("meta", "audit_log", "blocked_versions", "approvals", "nodes", "environment_history",
              "environments", "releases"):
        op.drop_table(t)
