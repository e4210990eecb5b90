"""The store's operations in operator terms: releases, environments, nodes, approvals, blocks, audit."""

from __future__ import annotations

import json
from contextlib import nullcontext
from datetime import UTC, datetime
from functools import cached_property
from typing import NamedTuple

from sqlalchemy import Text, bindparam, cast, event, select, update
from sqlalchemy.exc import IntegrityError

from provisioner.errors import ReleaseError
from provisioner.releases.build import Release, load_release
from provisioner.spec.models import Spec
from provisioner.states import IllegalTransition, NodeState, node_sources
from provisioner.store import audit
from provisioner.store.accounts import Accounts
from provisioner.store.boots import BootLedger
from provisioner.store.db import Database
from provisioner.store.models import (
    AccountRow,
    ApprovalRow,
    AuditRow,
    BlockedVersionRow,
    EnvironmentHistoryRow,
    EnvironmentRow,
    NodeEventRow,
    NodeRow,
    ReleaseRow,
)


class NodeReading(NamedTuple):
    """A node's row without its MACs: what plan, observe and compliance need."""
    name: str
    rack: str
    model: str
    environment: str
    state: str
    state_reason: str
    release_id: str | None
    installed_release: str | None
    observed: dict  # component -> version, the last BMC read; {} if never read


_READING_COLUMNS = (NodeRow.name, NodeRow.rack, NodeRow.model, NodeRow.environment, NodeRow.state,
                    NodeRow.state_reason, NodeRow.release_id, NodeRow.installed_release)


@event.listens_for(ReleaseRow, "before_update")
@event.listens_for(ReleaseRow, "before_delete")
def _releases_are_immutable(_mapper, _conn, target):
    raise ReleaseError(f"release {target.id[:12]} is immutable: build a new release instead")


def now() -> datetime:
    return datetime.now(UTC)


def aware(dt: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes; everything is stored in UTC."""
    return dt.replace(tzinfo=UTC) if dt is not None and dt.tzinfo is None else dt


# Prepared statements of the boot path (built once; each boot request only binds values).
_nodes, _blocks = NodeRow.__table__, BlockedVersionRow.__table__
_BOOT_NODE = (select(_nodes, EnvironmentRow.release_id.label("env_release_id"))
              .outerjoin(EnvironmentRow.__table__, EnvironmentRow.name == _nodes.c.environment)
              .where(_nodes.c.name == bindparam("name")))
_ACTIVE_BLOCKS = select(_blocks).where(_blocks.c.unblocked_at.is_(None)).order_by(_blocks.c.at)
_NODE_COLUMNS = frozenset(NodeRow.__table__.columns.keys()) - {"name", "updated_at"}


_TRANSITIONS: dict[tuple, tuple] = {}


def _transition_statement(event: str, fields: tuple[str, ...]):
    """(UPDATE moving a node along `event`, setting `fields` too; the state it leads to), built once."""
    key = (event, fields)
    if key not in _TRANSITIONS:
        for k in fields:
            if k not in _NODE_COLUMNS:
                raise AttributeError(f"nodes have no field {k!r}")
        sources, target = node_sources(event)
        stmt = (update(_nodes).where(_nodes.c.name == bindparam("t_name"),
                                     _nodes.c.state.in_(sorted(str(s) for s in sources)))
                .values(state=str(target), state_reason=bindparam("t_reason"), updated_at=bindparam("t_at"),
                        **{k: bindparam(f"v_{k}", type_=_nodes.c[k].type) for k in fields}))
        _TRANSITIONS[key] = (stmt, target)
    return _TRANSITIONS[key]


def _block(r) -> dict:
    return {"model": r.model, "component": r.component, "version": r.version, "reason": r.reason,
            "incident": r.incident, "by": r.by, "at": aware(r.at).isoformat()}


class Store:
    def __init__(self, db: Database):
        self.db = db
        self.boots = BootLedger(db, now)  # expected boots, their tokens and reports

    @cached_property
    def accounts(self) -> Accounts:
        """Accounts and personal API tokens (store/accounts.py)."""
        return Accounts(self.db)

    # -- releases -------------------------------------------------------------------------
    def add_release(self, release: Release, author: str, parent_id: str | None = None) -> bool:
        """Store `release` once; return False if it was already there (same content, same id)."""
        with self.db.session() as s:
            if s.get(ReleaseRow, release.id) is not None:
                return False
            # the person's name (an account's, or the name claimed in local mode), not "root@host"
            s.add(ReleaseRow(id=release.id, document=release.canonical.decode(), author=getattr(author, "name", author),
                             created_at=now(), parent_id=parent_id))
            audit.append(s, author, "release.build", release.id,
                         {"site": release.document["site"], "parent": parent_id})
        return True

    def resolve_release_id(self, ref: str) -> str:
        ref = ref.strip().lower()
        with self.db.session() as s:
            if len(ref) == 64 and s.get(ReleaseRow, ref):
                return ref
            ids = list(s.scalars(select(ReleaseRow.id).where(ReleaseRow.id.like(f"{ref}%")).limit(2)))
        if not ids or len(ref) < 4:
            raise ReleaseError(f"no release {ref!r}; `provisioner release list` shows the known ones")
        if len(ids) > 1:
            raise ReleaseError(f"release prefix {ref!r} is ambiguous; give more characters")
        return ids[0]

    def get_release(self, ref: str) -> Release:
        rid = self.resolve_release_id(ref)
        with self.db.session() as s:
            row = s.get(ReleaseRow, rid)
            return load_release(row.document.encode(), rid)

    def release_meta(self, ref: str) -> dict:
        rid = self.resolve_release_id(ref)
        with self.db.session() as s:
            row = s.get(ReleaseRow, rid)
            return {"id": row.id, "author": row.author, "created_at": aware(row.created_at).isoformat(),
                    "parent_id": row.parent_id}

    def list_releases(self) -> list[dict]:
        with self.db.session() as s:
            rows = s.scalars(select(ReleaseRow).order_by(ReleaseRow.created_at)).all()
            envs = {}
            for e in s.scalars(select(EnvironmentRow)):
                envs.setdefault(e.release_id, []).append(e.name)
            return [{"id": r.id, "author": r.author, "created_at": aware(r.created_at).isoformat(),
                     "parent_id": r.parent_id, "environments": sorted(envs.get(r.id, []))} for r in rows]

    # -- environments ---------------------------------------------------------------------
    def current_release_id(self, env: str) -> str | None:
        with self.db.session() as s:
            row = s.get(EnvironmentRow, env)
            return row.release_id if row else None

    def point_environment(self, env: str, release_id: str, by: str, reason: str, action: str = "env.point",
                          session=None) -> str | None:
        """Point `env` at `release_id`; return the release it pointed to before. In `session`'s
        transaction if given (a rollback re-points its environment as it records its rollout)."""
        with self.db.session() if session is None else nullcontext(session) as s:
            row = s.get(EnvironmentRow, env, with_for_update=True)
            previous = row.release_id if row else None
            if row is None:
                s.add(EnvironmentRow(name=env, release_id=release_id, updated_at=now()))
            else:
                row.release_id, row.updated_at = release_id, now()
            s.add(EnvironmentHistoryRow(environment=env, release_id=release_id, previous_id=previous,
                                        at=now(), by=by, reason=reason))
            audit.append(s, by, action, env, {"release": release_id, "previous": previous, "reason": reason})
        return previous

    def environment_history(self, env: str | None = None) -> list[dict]:
        with self.db.session() as s:
            q = select(EnvironmentHistoryRow).order_by(EnvironmentHistoryRow.seq)
            if env:
                q = q.where(EnvironmentHistoryRow.environment == env)
            return [{"environment": r.environment, "release_id": r.release_id, "previous_id": r.previous_id,
                     "at": aware(r.at).isoformat(), "by": r.by, "reason": r.reason} for r in s.scalars(q)]

    # -- nodes ----------------------------------------------------------------------------
    def sync_nodes(self, spec: Spec) -> int:
        """Make the node table match the inventory (new nodes are added, known ones keep their state)."""
        added = 0
        with self.db.session() as s:
            # One read of what the inventory sets, for every node (not a query per node: a round trip
            # each on PostgreSQL), and an UPDATE only for a node whose inventory entry changed. The
            # MACs come as their JSON text, decoded only if it is not what this process would write.
            known = {r[0]: r[1:] for r in s.execute(select(NodeRow.name, NodeRow.rack, NodeRow.model,
                                                           NodeRow.environment, cast(NodeRow.macs, Text))).all()}
            for rack, n in spec.nodes():
                macs = list(n.macs)
                have = known.get(n.name)
                if have is None:
                    s.add(NodeRow(name=n.name, rack=rack, model=n.model, environment=n.environment,
                                  macs=macs, state="new", state_reason="added from inventory",
                                  observed={}, updated_at=now()))
                    added += 1
                elif have[:3] != (rack, n.model, n.environment) or (
                        have[3] != json.dumps(macs) and (json.loads(have[3]) if have[3] else None) != macs):
                    s.execute(update(NodeRow).where(NodeRow.name == n.name).values(
                        rack=rack, model=n.model, environment=n.environment, macs=macs))
        return added

    def nodes(self, environment: str | None = None) -> list[NodeRow]:
        with self.db.session() as s:
            q = select(NodeRow).order_by(NodeRow.name)
            if environment:
                q = q.where(NodeRow.environment == environment)
            return list(s.scalars(q))

    def node_readings(self, environment: str | None = None) -> list[NodeReading]:
        """Every node (of `environment`) as plan and compliance read it, by name: one Core select of
        the columns they use (10,000 ORM rows cost more than the plan made from them), each
        distinct firmware JSON decoded once (a fleet runs a handful of firmware sets)."""
        q = select(*_READING_COLUMNS, cast(NodeRow.observed, Text)).order_by(NodeRow.name)
        if environment:
            q = q.where(NodeRow.environment == environment)
        decoded: dict[str | None, dict] = {}
        out = []
        with self.db.read() as c:
            for *columns, text in c.execute(q).all():
                fw = decoded.get(text)
                if fw is None:
                    fw = decoded[text] = (json.loads(text) if text else None) or {}
                out.append(NodeReading(*columns, dict(fw)))  # its own dict: callers may change it
        return out

    def node(self, name: str) -> NodeRow | None:
        with self.db.session() as s:
            return s.get(NodeRow, name)

    def update_node(self, name: str, **fields) -> None:
        for k in fields:
            if k not in _NODE_COLUMNS:
                raise AttributeError(f"nodes have no field {k!r}")
        with self.db.write() as c:  # one UPDATE: rollouts call this several times per node
            if c.execute(update(NodeRow).where(NodeRow.name == name).values(**fields, updated_at=now())).rowcount != 1:
                raise ReleaseError(f"unknown node {name!r}")

    def transition_node(self, name: str, event: str, reason: str, *, conn=None, **fields) -> NodeState:
        """Move `name` along the lifecycle edge `event` (provisioner/states.py), with `fields`, in one
        conditional UPDATE (in `conn`'s transaction if given); IllegalTransition if the node is in a
        state the edge does not leave from (checked by the database, so two writers cannot both win)."""
        stmt, target = _transition_statement(event, tuple(sorted(fields)))
        params = {"t_name": name, "t_reason": reason, "t_at": now(), **{f"v_{k}": v for k, v in fields.items()}}
        if conn is not None:
            n = conn.execute(stmt, params).rowcount
        else:
            with self.db.write() as c:
                n = c.execute(stmt, params).rowcount
        if n != 1:
            row = self.node(name)
            if row is None:
                raise ReleaseError(f"unknown node {name!r}")
            raise IllegalTransition(f"node {name} is {row.state}: it cannot take {event!r} (to {target})")
        return target

    # -- approvals ------------------------------------------------------------------------
    def approve(self, release_id: str, approver: str, comment: str = "") -> bool:
        """Record an approval (in the audit chain, which is what the gate counts); False if this
        person already approved this release. `approver` is an `Actor` bound to an account."""
        account = getattr(approver, "account", None)
        name = getattr(approver, "name", approver)
        try:
            with self.db.session() as s:
                s.add(ApprovalRow(release_id=release_id, approver=name, at=now(), comment=comment,
                                  account_id=account.id if account else None))
                s.flush()
                audit.append(s, approver, "release.approve", release_id, {"comment": comment, "approver": name})
        except IntegrityError:
            return False
        return True

    def withdraw_approval(self, release_id: str, approver: str, reason: str = "") -> bool:
        """Take an approval back (audited); False if this person had no approval of it."""
        account = getattr(approver, "account", None)
        name = getattr(approver, "name", approver)
        with self.db.session() as s:
            rows = s.scalars(select(ApprovalRow).where(ApprovalRow.release_id == release_id,
                                                       ApprovalRow.account_id == account.id if account
                                                       else ApprovalRow.approver == name)).all()
            counted = any(a["account_id"] == (account.id if account else None)
                          for a in self._chain_approvals(s, release_id))
            if not rows and not counted:
                return False
            for r in rows:
                s.delete(r)
            audit.append(s, approver, "release.approve.withdraw", release_id, {"reason": reason, "approver": name})
        return True

    def approvals(self, release_id: str) -> list[dict]:
        """The approvals the gate counts: read from the audit chain, not from the approvals table
        (a row written there behind the store's back does not count). Only approvals made by an
        authenticated, still enabled account, not withdrawn since."""
        with self.db.session() as s:
            return self._chain_approvals(s, release_id)

    @staticmethod
    def _chain_approvals(s, release_id: str) -> list[dict]:
        from provisioner.auth.identity import AUTHENTICATED

        current: dict[int, dict] = {}
        for e in audit.chained_entries(s, release_id, ("release.approve", "release.approve.withdraw")):
            if e.account_id is None or e.auth_method not in AUTHENTICATED:
                continue  # direct store access is nobody in particular
            if e.action == "release.approve":
                current.setdefault(e.account_id, {"approver": e.details.get("approver", e.actor),
                                                  "account_id": e.account_id, "at": aware(e.at).isoformat(),
                                                  "comment": e.details.get("comment", ""), "audit_seq": e.seq})
            else:
                current.pop(e.account_id, None)
        disabled = set(s.scalars(select(AccountRow.id).where(AccountRow.id.in_(current),
                                                             AccountRow.disabled_at.is_not(None))))
        return sorted((a for k, a in current.items() if k not in disabled), key=lambda a: a["audit_seq"])

    def release_author_account(self, release_id: str) -> int | None:
        """The account that built the release, as the audit chain says (None: direct store access)."""
        with self.db.session() as s:
            entries = audit.chained_entries(s, release_id, ("release.build",))
            return entries[0].account_id if entries else None

    # -- blocked versions -----------------------------------------------------------------
    def block(self, component: str, version: str, reason: str, by: str, incident: str | None = None,
              model: str | None = None) -> bool:
        with self.db.session() as s:
            existing = s.scalars(select(BlockedVersionRow).where(
                BlockedVersionRow.component == component, BlockedVersionRow.version == version,
                BlockedVersionRow.model.is_(None) if model is None else BlockedVersionRow.model == model,
                BlockedVersionRow.unblocked_at.is_(None))).first()
            if existing:
                return False
            s.add(BlockedVersionRow(model=model, component=component, version=version, reason=reason,
                                    incident=incident, by=by, at=now()))
            audit.append(s, by, "firmware.block", f"{component} {version}",
                         {"model": model, "reason": reason, "incident": incident})
        return True

    def unblock(self, component: str, version: str, by: str, reason: str, model: str | None = None) -> int:
        with self.db.session() as s:
            rows = s.scalars(select(BlockedVersionRow).where(
                BlockedVersionRow.component == component, BlockedVersionRow.version == version,
                BlockedVersionRow.unblocked_at.is_(None))).all()
            rows = [r for r in rows if model is None or r.model == model]
            for r in rows:
                r.unblocked_by, r.unblocked_at = by, now()
            if rows:
                audit.append(s, by, "firmware.unblock", f"{component} {version}", {"model": model, "reason": reason})
            return len(rows)

    def active_blocks(self) -> list[dict]:
        with self.db.read() as c:  # read before every rollout step: no ORM objects, no turn to wait for
            return [_block(r) for r in c.execute(_ACTIVE_BLOCKS)]

    # -- audit ----------------------------------------------------------------------------
    def audit(self, actor: str, action: str, subject: str, details: dict | None = None) -> None:
        with self.db.session() as s:
            audit.append(s, actor, action, subject, details)

    def audit_entries(self, limit: int | None = None) -> list[dict]:
        with self.db.session() as s:
            q = select(AuditRow).order_by(AuditRow.seq.desc())
            if limit:
                q = q.limit(limit)
            rows = list(s.scalars(q))[::-1]
            return [{"seq": r.seq, "at": aware(r.at).isoformat(), "actor": r.actor, "action": r.action,
                     "subject": r.subject, "details": r.details, "hash": r.hash, "account_id": r.account_id,
                     "auth_method": r.auth_method, "client": r.client} for r in rows]

    def verify_audit(self):
        with self.db.session() as s:
            return audit.verify(s)

    # -- boots and node events --------------------------------------------------------------
    def boot_view(self, name: str) -> tuple[dict | None, str | None, list[dict]]:
        """What the netboot gate needs of the store, read without waiting for a writer's turn:
        (the node's row as a dict or None, the release its environment points at, active blocks).
        The row's `live_boot` is the node's live boot (see `boots`), read in the same transaction."""
        with self.db.read() as conn:
            row = conn.execute(_BOOT_NODE, {"name": name}).mappings().first()
            if row is None:
                return None, None, []
            active = [_block(r) for r in conn.execute(_ACTIVE_BLOCKS)]
            row = dict(row)
            row["live_boot"] = self.boots.live_row(conn, name)
            return row, row.pop("env_release_id"), active

    def node_event(self, node: str, source: str, event: str, details: dict | None = None) -> None:
        with self.db.session() as s:
            s.add(NodeEventRow(node=node, at=now(), source=source, event=event, details=details or {}))

    def node_events(self, node: str | None = None, limit: int = 200) -> list[dict]:
        with self.db.session() as s:
            q = select(NodeEventRow).order_by(NodeEventRow.seq.desc()).limit(limit)
            if node:
                q = q.where(NodeEventRow.node == node)
            rows = list(s.scalars(q))[::-1]
            return [{"seq": r.seq, "node": r.node, "at": aware(r.at).isoformat(), "source": r.source,
                     "event": r.event, "details": r.details} for r in rows]
