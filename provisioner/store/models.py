"""SQLAlchemy tables of the store. The schema itself is created by Alembic migrations."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, DateTime, ForeignKey, Index, Integer, String, Text, UniqueConstraint, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class ReleaseRow(Base):
    """A frozen release. Rows are insert-only: an update or delete is refused by a trigger."""

    __tablename__ = "releases"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    document: Mapped[bytes] = mapped_column(Text)
    author: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    parent_id: Mapped[str | None] = mapped_column(String(64), nullable=True)


class EnvironmentRow(Base):
    __tablename__ = "environments"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    release_id: Mapped[str | None] = mapped_column(ForeignKey("releases.id"), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class EnvironmentHistoryRow(Base):
    __tablename__ = "environment_history"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    environment: Mapped[str] = mapped_column(String(64), index=True)
    release_id: Mapped[str] = mapped_column(ForeignKey("releases.id"))
    previous_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    by: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(Text)


class NodeRow(Base):
    __tablename__ = "nodes"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    rack: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(64))
    environment: Mapped[str] = mapped_column(String(64), index=True)
    macs: Mapped[list] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(32), default="new")  # provisioner/states.py NodeState
    state_reason: Mapped[str] = mapped_column(Text, default="")
    release_id: Mapped[str | None] = mapped_column(String(64), nullable=True)  # release it last verified at
    observed: Mapped[dict] = mapped_column(JSON, default=dict)  # component -> version, last BMC read
    observed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    installed_release: Mapped[str | None] = mapped_column(String(64), nullable=True)  # from the callback
    healthy_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ApprovalRow(Base):
    __tablename__ = "approvals"
    __table_args__ = (UniqueConstraint("release_id", "approver"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    release_id: Mapped[str] = mapped_column(ForeignKey("releases.id"), index=True)
    approver: Mapped[str] = mapped_column(String(128))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    comment: Mapped[str] = mapped_column(Text, default="")
    # A convenience index only: the gate counts approvals from the audit chain (migration 0007)
    account_id: Mapped[int | None] = mapped_column(Integer, nullable=True)


class BlockedVersionRow(Base):
    __tablename__ = "blocked_versions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model: Mapped[str | None] = mapped_column(String(64), nullable=True)
    component: Mapped[str] = mapped_column(String(32))
    version: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(Text)
    incident: Mapped[str | None] = mapped_column(String(64), nullable=True)
    by: Mapped[str] = mapped_column(String(128))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    unblocked_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    unblocked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class AuditRow(Base):
    """Append-only, hash-chained: hash = sha256(prev_hash || canonical(entry))."""

    __tablename__ = "audit_log"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64), index=True)
    subject: Mapped[str] = mapped_column(Text)
    details: Mapped[dict] = mapped_column(JSON)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))
    # Who, established how, from where (migration 0007); hashed with the entry when set
    account_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    auth_method: Mapped[str | None] = mapped_column(String(16), nullable=True)
    client: Mapped[str | None] = mapped_column(String(255), nullable=True)


class MetaRow(Base):
    """Small key/value facts, e.g. the audit chain's head (seq and hash of the last entry)."""

    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class BootTokenRow(Base):
    """One expected boot of a node and its callback token (only the token's sha256 is stored).

    At most one live (unclosed) boot per node, enforced by a unique partial index (migration 0006).
    The token is bound to what the boot is for: action, release, and the image digests the boot
    script names (bound when the node first fetches it)."""

    __tablename__ = "boot_tokens"
    __table_args__ = (Index("ix_boot_tokens_live", "node", unique=True, sqlite_where=text("closed_at IS NULL"),
                            postgresql_where=text("closed_at IS NULL")),)  # migrations 0004, 0006
    token_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    node: Mapped[str] = mapped_column(String(64), index=True)
    release_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    action: Mapped[str] = mapped_column(String(16))
    issued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    closed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    closed_by: Mapped[str | None] = mapped_column(String(32), nullable=True)  # final event, "superseded", "ended"
    boot_id: Mapped[str | None] = mapped_column(String(32), nullable=True)  # the token is HMAC(key, boot_id)
    opened_by: Mapped[str | None] = mapped_column(String(16), nullable=True)  # rollout | gate
    images: Mapped[list | None] = mapped_column(JSON(none_as_null=True), nullable=True)  # sorted sha256 digests, once fetched
    reports: Mapped[int | None] = mapped_column(Integer, nullable=True, default=0)


class NodeEventRow(Base):
    """What a node reported (callbacks) and what the pipeline did to it, in order."""

    __tablename__ = "node_events"
    __table_args__ = (Index("ix_node_events_at", "at"),)  # migration 0006: pruning by age
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    node: Mapped[str] = mapped_column(String(64), index=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    source: Mapped[str] = mapped_column(String(16))  # callback | netboot | rollout | bmc
    event: Mapped[str] = mapped_column(String(32))
    details: Mapped[dict] = mapped_column(JSON)


class RolloutRow(Base):
    """One application of a release to an environment (apply, rollback or drift correction)."""

    __tablename__ = "rollouts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    environment: Mapped[str] = mapped_column(String(64), index=True)
    release_id: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))  # apply | rollback | drift
    status: Mapped[str] = mapped_column(String(16))  # running | halted | done | superseded
    reason: Mapped[str] = mapped_column(Text, default="")
    by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class RolloutNodeRow(Base):
    """One node's part in a rollout: its wave, its planned action, and how far it got."""

    __tablename__ = "rollout_nodes"
    rollout_id: Mapped[int] = mapped_column(ForeignKey("rollouts.id"), primary_key=True)
    node: Mapped[str] = mapped_column(String(64), primary_key=True)
    position: Mapped[int] = mapped_column(Integer)
    wave: Mapped[int] = mapped_column(Integer)  # 0 = canary
    rack: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(16))
    plan: Mapped[dict] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16))  # pending | running | done | failed | skipped
    step: Mapped[str] = mapped_column(String(32), default="")
    error: Mapped[str] = mapped_column(Text, default="")
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class RolloutStepRow(Base):
    """The durable step log: a row before each step begins and one after it ends."""

    __tablename__ = "rollout_steps"
    # migration 0009: a worker taking a node over reads that node's finished steps
    __table_args__ = (Index("ix_rollout_steps_rollout_node", "rollout_id", "node"),)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    rollout_id: Mapped[int] = mapped_column(Integer, index=True)
    node: Mapped[str] = mapped_column(String(64))
    step: Mapped[str] = mapped_column(String(32))
    phase: Mapped[str] = mapped_column(String(8))  # begin | end | error | skip
    details: Mapped[dict] = mapped_column(JSON)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AccountRow(Base):
    """A person (or automation) who may act, by role. `username` is normalised once, on the way in."""

    __tablename__ = "accounts"
    __table_args__ = (UniqueConstraint("oidc_issuer", "oidc_subject", name="uq_accounts_oidc"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(128), unique=True)
    role: Mapped[str] = mapped_column(String(16))  # viewer | operator | approver | admin
    password_hash: Mapped[str | None] = mapped_column(Text, nullable=True)  # argon2id; None: token/SSO only
    oidc_issuer: Mapped[str | None] = mapped_column(String(255), nullable=True)
    oidc_subject: Mapped[str | None] = mapped_column(String(255), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_by: Mapped[str] = mapped_column(String(128))
    disabled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class ApiTokenRow(Base):
    """A personal API token: only its sha256 is kept; named, expiring, revocable."""

    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class LeaseRow(Base):
    """Mutual exclusion through the store (migration 0005): who works on an environment, node or BMC.

    A row per key ("environment:staging", "node:s1n01", "bmc:127.0.11.1:6230") is kept after its
    holder lets go, so `token` only grows: a fencing token. Taken and checked with plain conditional
    INSERT/UPDATE statements, the same on SQLite and PostgreSQL.
    """

    __tablename__ = "leases"
    key: Mapped[str] = mapped_column(String(160), primary_key=True)
    holder: Mapped[str] = mapped_column(String(200))  # host:pid:uuid of the process
    purpose: Mapped[str] = mapped_column(Text)  # e.g. "rollout 12 (apply)"
    token: Mapped[int] = mapped_column(Integer)  # +1 each time the lease changes hands
    acquired_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
