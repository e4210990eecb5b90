"""Leases: mutual exclusion across processes and hosts through the store, with fencing.

A lease is a row per key (`environment:NAME`, `node:NAME`, `bmc:HOST:PORT`): its holder
(host:pid:uuid), purpose, heartbeat, expiry and a fencing token that grows each time the lease
changes hands. It is taken in the transaction that starts the work, renewed by a heartbeat
thread, and checked by every write of the holder (`fence`, the first statement of the write's
transaction): a holder whose lease expired, or was taken over, writes nothing and stops.

Only plain conditional INSERT … ON CONFLICT DO NOTHING and UPDATE … WHERE are used, so the same
statements hold on PostgreSQL (where the fence's UPDATE also row-locks the lease until commit).
Times are the holders' clocks: keep them within a fraction of the lease time (NTP does).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import bindparam, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from provisioner.errors import LeaseLost, RolloutBusy
from provisioner.store.models import LeaseRow
from provisioner.store.repo import Store, aware, now

log = logging.getLogger("provisioner.lease")

DEFAULT_SECONDS = 15.0  # a crashed holder's work is taken over this long after its last heartbeat
_leases = LeaseRow.__table__
_c = _leases.c
# Statements built once (every rollout write runs the fence: building them per call cost more
# than running them). Bind names differ from column names, which UPDATE … SET reserves.
_SELECT = select(_leases).where(_c.key == bindparam("k"))
_FENCE = (update(_leases).where(_c.key == bindparam("k"), _c.holder == bindparam("h"), _c.token == bindparam("t"),
                                _c.expires_at > bindparam("at")).values(heartbeat_at=_c.heartbeat_at))
_EXTEND = (update(_leases).where(_c.key == bindparam("k"), _c.holder == bindparam("h"))
           .values(purpose=bindparam("p"), heartbeat_at=bindparam("at"), expires_at=bindparam("exp")))
_TAKE_OVER = (update(_leases).where(_c.key == bindparam("k"), or_(_c.expires_at <= bindparam("at"),
                                                                   _c.holder == bindparam("dead")))
              .values(holder=bindparam("h"), purpose=bindparam("p"), token=_c.token + 1,
                      acquired_at=bindparam("at"), heartbeat_at=bindparam("at"), expires_at=bindparam("exp")))
# A lease let go ends now; its heartbeat_at moves to now too, which the heartbeat's UPDATE requires
# to be before the round's start: a round that read `held` before the release cannot revive it.
_RELEASE = (update(_leases).where(_c.key == bindparam("k"), _c.holder == bindparam("h"), _c.token == bindparam("t"))
            .values(expires_at=bindparam("at"), heartbeat_at=bindparam("at")))
_INSERTS: dict[str, object] = {}


def default_seconds() -> float:
    """PROVISIONER_LEASE_SECONDS, for tests and sites with slow stores; else DEFAULT_SECONDS."""
    try:
        return max(1.0, float(os.environ.get("PROVISIONER_LEASE_SECONDS", DEFAULT_SECONDS)))
    except ValueError:
        return DEFAULT_SECONDS


def host_id() -> str:
    """This host's name in holder ids: PROVISIONER_HOST_ID if set (processes that share a hostname
    but not a PID namespace, e.g. containers, must each name their own), else the hostname."""
    return os.environ.get("PROVISIONER_HOST_ID") or socket.gethostname()


def new_holder() -> str:
    return f"{host_id()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


def environment_key(env: str) -> str:
    return f"environment:{env}"


def node_key(node: str) -> str:
    return f"node:{node}"


def bmc_key(address: str, port: int) -> str:
    return f"bmc:{address}:{port}"


def _dead_here(holder: str) -> bool:
    """The holder ran on this host and its process is gone (a kill -9): no need to wait for expiry."""
    host, _, rest = holder.partition(":")
    pid = rest.partition(":")[0]
    if host != host_id() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, someone else's
        return False
    return False


def _insert(conn):
    stmt = _INSERTS.get(conn.dialect.name)
    if stmt is None:
        dialect = {"sqlite": sqlite, "postgresql": postgresql}.get(conn.dialect.name)
        # another database: a plain INSERT, its IntegrityError means "taken"
        stmt = insert(_leases) if dialect is None else dialect.insert(_leases).on_conflict_do_nothing(
            index_elements=["key"])
        _INSERTS[conn.dialect.name] = stmt
    return stmt


@dataclass(frozen=True)
class Held:
    key: str
    token: int


class Leases:
    """The leases of one process (one holder id), and its heartbeat thread."""

    def __init__(self, store: Store, *, seconds: float | None = None, holder: str | None = None):
        self.store, self.db = store, store.db
        self.seconds = seconds or default_seconds()
        self.holder = holder or new_holder()
        self.held: dict[str, Held] = {}
        self._renewed = time.monotonic()  # last time every held lease was known to be ours
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._local = threading.local()  # .pending: leases taken in a transaction not yet committed
        self.lost: str = ""

    # -- inside a write transaction ---------------------------------------------------------------
    def take(self, conn, key: str, purpose: str) -> Held:
        """Take `key` in the caller's transaction; RolloutBusy names the live holder and since when."""
        at = now()
        expires = at + timedelta(seconds=self.seconds)
        values = {"key": key, "holder": self.holder, "purpose": purpose, "token": 1, "acquired_at": at,
                  "heartbeat_at": at, "expires_at": expires}
        if conn.execute(_insert(conn), values).rowcount == 1:
            return self._keep(Held(key, 1))
        row = conn.execute(_SELECT, {"k": key}).first()
        if row.holder == self.holder:  # ours already (a rollback that then applies): keep the token
            conn.execute(_EXTEND, {"k": key, "h": self.holder, "p": purpose, "at": at, "exp": expires})
            return self._keep(Held(key, row.token))
        dead = row.holder if _dead_here(row.holder) else ""  # "" matches no holder
        taken = conn.execute(_TAKE_OVER, {"k": key, "at": at, "dead": dead, "h": self.holder, "p": purpose,
                                          "exp": expires}).rowcount
        if taken != 1:
            since = aware(row.acquired_at)
            raise RolloutBusy(f"{key.replace(':', ' ', 1)} is busy: {row.purpose}, held by {row.holder} since "
                              f"{since:%Y-%m-%d %H:%M:%S} UTC", holder=row.holder, since=since.isoformat())
        if aware(row.expires_at) > at:
            log.warning("lease.takeover key=%s dead_holder=%s", key, row.holder)
        return self._keep(Held(key, row.token + 1))

    @contextmanager
    def tentative(self):
        """Leases this thread takes inside the block count as held only if it ends without an error,
        after the caller's transaction committed (end the transaction inside the block). Until then
        a heartbeat round leaves them alone: it would read their rows as they were before that
        transaction, see another holder, and call them lost; and, the transaction rolled back,
        nothing of them is kept."""
        pending: dict[str, Held] = {}
        self._local.pending = pending
        try:
            yield
        finally:
            self._local.pending = None
        with self._lock:
            self.held.update(pending)

    def fence(self, conn, key: str) -> None:
        """First statement of every write of the holder: the lease is still ours and not expired."""
        held = self.held.get(key)
        ok = held is not None and conn.execute(
            _FENCE, {"k": key, "h": self.holder, "t": held.token, "at": now()}).rowcount == 1
        if not ok:
            self._lose(f"lease {key} expired or was taken over; this process stops without writing")

    def release(self, conn, *keys: str) -> None:
        """Let go of `keys` in the caller's transaction (the row stays: its token keeps growing)."""
        at = now()
        for key in keys:
            held = self.held.get(key)
            if held is not None:
                conn.execute(_RELEASE, {"k": key, "h": self.holder, "t": held.token, "at": at})
        with self._lock:
            for key in keys:
                self.held.pop(key, None)

    def release_all(self) -> None:
        if not self.held:
            return
        try:
            with self.db.write() as c:
                self.release(c, *list(self.held))
        except Exception:  # the lease then expires by itself
            log.exception("lease.release_failed")

    # -- outside transactions ---------------------------------------------------------------------
    def check(self) -> None:
        """Before touching a BMC: a holder that could not renew within the lease time stops (it
        may have been frozen, e.g. SIGSTOP, while another took over)."""
        if self.lost:
            raise LeaseLost(self.lost)
        if time.monotonic() - self._renewed >= self.seconds:
            self._lose(f"lease not renewed for {self.seconds:.0f}s; this process stops")

    def peek(self, key: str) -> dict | None:
        """The live lease on `key` (not ours), if any: {holder, purpose, since}."""
        with self.db.read() as c:
            row = c.execute(_SELECT, {"k": key}).first()
        if row is None or row.holder == self.holder or aware(row.expires_at) <= now() or _dead_here(row.holder):
            return None
        return {"holder": row.holder, "purpose": row.purpose, "since": aware(row.acquired_at).isoformat()}

    def start_heartbeat(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._beat, name="lease-heartbeat", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def _beat(self) -> None:
        while not self._stop.wait(self.seconds / 3):
            try:
                self.renew()
            except LeaseLost:
                return
            except Exception:  # a store hiccup: try again; `check` stops the holder if it lasts
                log.exception("lease.heartbeat_failed")

    def renew(self) -> None:
        """One UPDATE for every lease of this holder; an expired one is not revived (fencing), nor one let
        go after this round read `held` (it would keep a BMC from the next claim until it expired)."""
        with self._lock:
            held = dict(self.held)
        if not held:
            self._renewed = time.monotonic()
            return
        started, at = time.monotonic(), now()
        values = {"heartbeat_at": at, "expires_at": at + timedelta(seconds=self.seconds)}
        if self.db.engine.dialect.name == "postgresql":
            # One UPDATE of every lease no transaction holds (SKIP LOCKED: it never waits, so it
            # cannot deadlock with a fenced write of ours holding one lease and waiting for
            # another); then the few skipped, one row per transaction (a row-at-a-time wait
            # cannot close a cycle). Not one transaction per lease: 64 nodes in flight hold 129.
            with self.db.write() as c:
                free = (select(_leases.c.key).where(_leases.c.key.in_(list(held)), _leases.c.holder == self.holder,
                                                     _leases.c.expires_at > at, _leases.c.heartbeat_at < at)
                        .with_for_update(skip_locked=True))
                renewed = set(c.execute(update(_leases).where(_leases.c.key.in_(free)).values(**values)
                                        .returning(_leases.c.key)).scalars())
            n = len(renewed)
            for key in sorted(set(held) - renewed):
                with self.db.write() as c:
                    n += c.execute(update(_leases).where(_leases.c.key == key, _leases.c.holder == self.holder,
                                                         _leases.c.expires_at > at, _leases.c.heartbeat_at < at)
                                   .values(**values)).rowcount
        else:  # one writer at a time: no deadlock, and one commit instead of one per lease
            with self.db.write() as c:
                n = c.execute(update(_leases).where(_leases.c.holder == self.holder, _leases.c.key.in_(list(held)),
                                                    _leases.c.expires_at > at, _leases.c.heartbeat_at < at)
                              .values(**values)).rowcount
        if n != len(held):  # one let go meanwhile (released: fine), or one expired or taken over (lost)
            with self.db.read() as c:
                rows = {r.key: r for r in c.execute(select(_leases).where(_leases.c.key.in_(list(held))))}
            with self._lock:
                lost = [k for k, h in held.items() if k in self.held and (
                    rows[k].holder != self.holder or rows[k].token != h.token or aware(rows[k].expires_at) <= at)]
            if lost:
                self._lose(f"lease(s) {', '.join(lost)} of {self.holder} expired before their heartbeat; "
                           "this process stops without writing")
        self._renewed = started

    def _keep(self, held: Held) -> Held:
        pending = getattr(self._local, "pending", None)
        if pending is not None:
            pending[held.key] = held
            return held
        with self._lock:
            self.held[held.key] = held
        return held

    def _lose(self, message: str) -> None:
        if not self.lost:
            self.lost = message
            log.error("lease.lost holder=%s %s", self.holder, message)
        raise LeaseLost(self.lost)
