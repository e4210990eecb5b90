"""Expected boots and their callback tokens: opened, handed out again, reported on, closed, pruned.

A boot is what one power-on of a node is for: its action (install, flash, local, hold), the
release, and the image digests its boot script names. The rollout opens one when it power-cycles
a node into PXE (`expect`); the netboot gate opens one when a node boots outside a rollout
(`for_decision`). Fetching the boot script again during that boot hands out the same token
(derived: HMAC of a per-store key and the boot's id, so the store keeps no token), and cancels
nothing. At most one boot per node is live: a unique partial index says so, whatever process
writes. Closed boots and old node events are deleted by `prune` after their retention.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass
from datetime import timedelta
from types import SimpleNamespace

from sqlalchemy import bindparam, delete, insert, select, text, update
from sqlalchemy.exc import IntegrityError

from provisioner.errors import TokenRefused
from provisioner.store.db import Database
from provisioner.store.models import BootTokenRow, MetaRow, NodeEventRow, NodeRow

log = logging.getLogger("provisioner.store")

KEY = "boot_token_key"
_boots, _events, _meta, _nodes = BootTokenRow.__table__, NodeEventRow.__table__, MetaRow.__table__, NodeRow.__table__
CALLBACK_ORDER_LOCK = 0x70726F76  # pg_advisory_xact_lock key: callback events commit in seq order


def _in_seq_order(s) -> None:
    """Before writing a callback event: a waiting rollout reads callbacks by rising seq, and
    PostgreSQL hands out seq values before commit, so two reports could become visible out of seq
    order and the reader would step over the later-committed one. They take turns until commit.
    The NOTIFY wakes, at commit, whoever waits for reports on any host (rollout/notify.py)."""
    dialect = s.dialect if hasattr(s, "dialect") else s.get_bind().dialect  # a Connection or a Session
    if dialect.name == "postgresql":
        s.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": CALLBACK_ORDER_LOCK})
        s.execute(text("SELECT pg_notify('provisioner_callback', '')"))
_LIVE = select(_boots).where(_boots.c.node == bindparam("n"), _boots.c.closed_at.is_(None))
_CLOSE_LIVE = (update(_boots).where(_boots.c.node == bindparam("n"), _boots.c.closed_at.is_(None))
               .values(closed_at=bindparam("at"), closed_by=bindparam("why")))
_CLOSE_ONE = (update(_boots).where(_boots.c.token_sha256 == bindparam("h"), _boots.c.closed_at.is_(None))
              .values(closed_at=bindparam("at"), closed_by=bindparam("why")))
_BIND_IMAGES = (update(_boots).where(_boots.c.token_sha256 == bindparam("h"), _boots.c.images.is_(None))
                .values(images=bindparam("imgs")))
_ADD_BOOT, _ADD_EVENT = insert(_boots), insert(_events)
# a report, in Core statements built once (the ORM's unit of work was most of a callback's cost)
_BOOT_BY_HASH = select(_boots).where(_boots.c.token_sha256 == bindparam("h")).with_for_update()
_COUNT_REPORT = (update(_boots).where(_boots.c.token_sha256 == bindparam("h"))
                 .values(reports=bindparam("reports"), closed_at=bindparam("closed_at"), closed_by=bindparam("closed_by")))
_REPORTED_NODE = (select(_nodes.c.state, _nodes.c.state_reason, _nodes.c.installed_release)
                  .where(_nodes.c.name == bindparam("n")))
_UPDATE_NODE = (update(_nodes).where(_nodes.c.name == bindparam("n"))
                .values(state=bindparam("state"), state_reason=bindparam("state_reason"),
                        installed_release=bindparam("installed_release"), updated_at=bindparam("at")))


@dataclass(frozen=True)
class Retention:
    """How long the store keeps what nodes leave behind (the README's security model lists these)."""

    closed_boots: timedelta = timedelta(days=7)
    node_events: timedelta = timedelta(days=90)
    every: timedelta = timedelta(hours=1)  # how often a boot server prunes


@dataclass(frozen=True)
class Boot:
    """A boot as a report is checked against it."""

    node: str
    action: str
    release_id: str | None
    images: tuple[str, ...] | None
    opened_by: str
    reports: int


def _boot(row) -> Boot:
    return Boot(row.node, row.action, row.release_id, tuple(row.images) if row.images is not None else None,
                row.opened_by or "gate", row.reports or 0)


class BootLedger:
    def __init__(self, db: Database, now):
        self.db, self.now = db, now
        self._key: bytes | None = None

    # -- tokens ---------------------------------------------------------------------------------
    def _secret(self) -> bytes:
        if self._key is None:
            with self.db.read() as c:
                value = c.scalar(select(_meta.c.value).where(_meta.c.key == KEY))
            if value is None:
                try:
                    with self.db.write() as c:
                        c.execute(insert(_meta), {"key": KEY, "value": secrets.token_hex(32)})
                except IntegrityError:
                    pass  # another process made it first: use theirs
                with self.db.read() as c:
                    value = c.scalar(select(_meta.c.value).where(_meta.c.key == KEY))
            self._key = bytes.fromhex(value)
        return self._key

    def load_key(self) -> None:
        """Read (or make) the token key now. Making it is a write of its own: a caller that opens a
        boot inside its own write transaction (`expect(conn=...)`) loads the key before that begins."""
        self._secret()

    def token(self, boot_id: str) -> str:
        mac = hmac.new(self._secret(), boot_id.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac[:24]).decode()

    @staticmethod
    def _hash(token: str) -> str:
        return hashlib.sha256(token.encode()).hexdigest()

    # -- opening boots --------------------------------------------------------------------------
    def _open(self, conn, node: str, action: str, release_id: str | None, opened_by: str,
              images: list[str] | None, event: dict | None, replacing=...) -> str:
        """Open a boot. `replacing` is the live boot this one supersedes as its opener last saw
        it (None: none); by default every live boot of the node. A write comes first, so SQLite
        never has to upgrade a stale read; if another writer got there first, the unique index
        refuses the insert (IntegrityError) and the caller looks again."""
        at = self.now()
        boot_id = secrets.token_hex(16)
        token = self.token(boot_id)
        if replacing is ...:
            conn.execute(_CLOSE_LIVE, {"n": node, "at": at, "why": "superseded"})
        elif replacing is not None:
            conn.execute(_CLOSE_ONE, {"h": replacing, "at": at, "why": "superseded"})
        conn.execute(_ADD_BOOT, {"token_sha256": self._hash(token), "node": node, "release_id": release_id,
                                 "action": action, "issued_at": at, "boot_id": boot_id, "opened_by": opened_by,
                                 "images": images, "reports": 0})
        if event:
            conn.execute(_ADD_EVENT, {"node": node, "at": at, **event})
        return token

    def expect(self, node: str, action: str, release_id: str | None, *, conn=None, fence=None) -> None:
        """The rollout is about to power-cycle `node` for `action`: this is the boot reports must fit.
        Any earlier boot of the node stops taking reports. In `conn`'s transaction if given (after
        `load_key()`, the caller's fenced write); else in one of its own, `fence(conn)` (the writer's
        lease check) first."""
        if conn is None:
            self.load_key()  # made (a write of its own) before this transaction holds the writer's lock
            with self.db.write() as c:
                if fence is not None:
                    fence(c)
                return self.expect(node, action, release_id, conn=c)
        self._open(conn, node, action, release_id, "rollout", None,
                   {"source": "rollout", "event": "boot_expected", "details": {"action": action,
                                                                              "release": release_id}})

    def end(self, node: str, why: str = "ended", fence=None) -> None:
        """The rollout stopped waiting for `node`'s boot: late reports of it change nothing."""
        with self.db.write() as c:
            if fence is not None:
                fence(c)
            c.execute(_CLOSE_LIVE, {"n": node, "at": self.now(), "why": why})

    @staticmethod
    def live_row(conn, node: str):
        """The node's live boot row (or None), read on the caller's connection."""
        return conn.execute(_LIVE, {"n": node}).first()

    def for_decision(self, node: str, action: str, release_id: str | None, images: list[str],
                     event: dict, live=...) -> str:
        """The token for the boot script the gate just decided on. The live boot's token when the
        decision fits it (binding its images on the first fetch of a boot the rollout opened); a
        new boot only when the node has none, or its gate-opened boot was for something else.
        `live` is the node's live boot row as the caller read it with the gate's view, if it did."""
        for _ in range(3):
            if live is ...:
                with self.db.read() as c:
                    live = self.live_row(c, node)
            if live is not None:
                fits = live.action == action and live.release_id == release_id
                if fits and live.images is None:
                    with self.db.write() as c:  # first fetch of a boot the rollout opened
                        if c.execute(_BIND_IMAGES, {"h": live.token_sha256, "imgs": images}).rowcount:
                            c.execute(_ADD_EVENT, {"node": node, "at": self.now(), **event})
                    return self.token(live.boot_id)
                if fits and list(live.images) == images:
                    return self.token(live.boot_id)
                if live.opened_by == "rollout":
                    # the rollout expects something else of this boot; hand out its token anyway:
                    # a report that does not fit is refused, and the rollout's boot is not cancelled
                    log.warning("netboot.boot_mismatch node=%s expected=%s decided=%s", node, live.action, action)
                    return self.token(live.boot_id)
            try:
                with self.db.write() as c:
                    return self._open(c, node, action, release_id, "gate", images, event,
                                      replacing=live.token_sha256 if live is not None else None)
            except IntegrityError:  # another process opened the node's boot meanwhile: use that one
                live = ...
        raise TokenRefused(f"{node}: could not open a boot (concurrent writers)")

    # -- reports --------------------------------------------------------------------------------
    def live(self, node: str, token: str) -> Boot:
        """The live boot `token` belongs to; TokenRefused if unknown, closed or another node's."""
        with self.db.read() as c:
            row = c.execute(select(_boots).where(_boots.c.token_sha256 == self._hash(token))).first()
        return _boot(self._usable(row, node))

    @staticmethod
    def _usable(row, node: str):
        if row is None or row.node != node:
            raise TokenRefused(f"callback token is not valid for node {node}")
        if row.closed_at is not None:
            raise TokenRefused(f"callback token of {node} was already used ({row.closed_by})")
        return row

    def report(self, node: str, token: str, check, close_with: str | None, event: dict, node_update=None) -> Boot:
        """Take one report of `node`'s live boot: `check(boot)` raises to refuse it; then, in one
        transaction, the boot is closed (`close_with`), `node_update(node_row, boot)` changes the
        node, and `event` is recorded, so whoever waits for the event sees the node changed.
        `node_update` is given the node's state, state_reason and installed_release to change."""
        h = self._hash(token)
        with self.db.write() as c:
            row = c.execute(_BOOT_BY_HASH, {"h": h}).first()
            self._usable(row, node)
            boot = _boot(row)
            check(boot)
            at = self.now()
            c.execute(_COUNT_REPORT, {"h": h, "reports": (row.reports or 0) + 1,
                                      "closed_at": at if close_with else row.closed_at,
                                      "closed_by": close_with if close_with else row.closed_by})
            if node_update is not None:
                node_row = SimpleNamespace(**c.execute(_REPORTED_NODE, {"n": node}).one()._asdict())
                node_update(node_row, boot)
                c.execute(_UPDATE_NODE, {"n": node, "at": at, **vars(node_row)})
            _in_seq_order(c)
            c.execute(_ADD_EVENT, {"node": node, "at": at, **event})
            return boot

    def fail_boots_using(self, digest: str, reason: str) -> list[str]:
        """Close every live boot the rollout opened whose script names `digest` as failed, and
        record the failure where the rollout waits for reports: the node fails now, not at its timeout."""
        failed = []
        with self.db.session() as s:
            rows = s.scalars(select(BootTokenRow).where(BootTokenRow.closed_at.is_(None),
                                                        BootTokenRow.opened_by == "rollout")).all()
            for row in rows:
                if digest in (row.images or ()):
                    row.closed_at, row.closed_by = self.now(), "failed"
                    _in_seq_order(s)
                    s.add(NodeEventRow(node=row.node, at=self.now(), source="callback", event="failed",
                                       details={"error": reason, "reported_by": "boot server",
                                                "boot_action": row.action}))
                    failed.append(row.node)
        return failed

    def suspicious(self, node: str, reason: str, details: dict) -> None:
        with self.db.write() as c:
            c.execute(_ADD_EVENT, {"node": node, "at": self.now(), "source": "netboot", "event": "suspicious",
                                   "details": {"reason": reason, **details}})

    # -- retention ------------------------------------------------------------------------------
    def prune(self, retention: Retention) -> dict[str, int]:
        at = self.now()
        with self.db.write() as c:
            boots = c.execute(delete(_boots).where(_boots.c.closed_at.is_not(None),
                                                   _boots.c.closed_at < at - retention.closed_boots)).rowcount
            events = c.execute(delete(_events).where(_events.c.at < at - retention.node_events)).rowcount
        if boots or events:
            log.info("store.prune closed_boots=%d node_events=%d", boots, events)
        return {"closed_boots": boots, "node_events": events}
