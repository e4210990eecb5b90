"""Accounts, personal API tokens, and who/how/where on audit entries and approvals.

Revision ID: 0007
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("username", sa.String(128), nullable=False, unique=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("password_hash", sa.Text),
        sa.Column("oidc_issuer", sa.String(255)),
        sa.Column("oidc_subject", sa.String(255)),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("disabled_at", TZ),
        sa.UniqueConstraint("oidc_issuer", "oidc_subject", name="uq_accounts_oidc"),
    )
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("account_id", sa.Integer, sa.ForeignKey("accounts.id"), nullable=False, index=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("token_sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("expires_at", TZ, nullable=False),
        sa.Column("revoked_at", TZ),
        sa.Column("last_used_at", TZ),
    )
    with op.batch_alter_table("audit_log") as b:
        b.add_column(sa.Column("account_id", sa.Integer))
        b.add_column(sa.Column("auth_method", sa.String(16)))
        b.add_column(sa.Column("client", sa.String(255)))
    with op.batch_alter_table("approvals") as b:
        b.add_column(sa.Column("account_id", sa.Integer))


def downgrade() -> None:
    with op.batch_alter_table("approvals") as b:
        b.drop_column("account_id")
    with op.batch_alter_table("audit_log") as b:
        for c in ("client", "auth_method", "account_id"):
            b.drop_column(c)
    op.drop_table("api_tokens")
    op.drop_table("accounts")
