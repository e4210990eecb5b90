"""Claiming a rollout's node operations through the store, so its limits hold across every worker.

One claim is one transaction:

  1. lock the rollout's row: `FOR NO KEY UPDATE SKIP LOCKED` on PostgreSQL (a worker that finds
     another claiming in this rollout goes elsewhere and comes back; the step writes of running
     nodes, which take KEY SHARE through their foreign key, are not held up); on SQLite a no-op
     UPDATE as the first statement takes the one writer's lock;
  2. read what the rollout's nodes are doing and the leases of the running ones;
  3. halt the rollout (failure threshold, a block covering a pin) or finish it (nothing left);
  4. else pick the next node the limits allow: canary wave first, then each wave once every
     earlier node ended; at most `max_concurrency` running and `max_unavailable_per_rack` per
     rack, counted over every worker; a node whose holder's lease expired (a worker killed
     mid-step) first, as it is running already; never one whose BMC another holder has;
  5. take the node's and its BMC's leases (rollout/lease.py: their fencing token fences every
     later write of that node) and mark it running.

The step functions then resume the node from its record, reading the BMC before acting, so a
node taken over from a dead worker is never flashed twice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import func, or_, select, update

from provisioner.errors import RolloutBusy
from provisioner.observability import metrics
from provisioner.rollout.lease import Leases, _dead_here, bmc_key, environment_key, node_key
from provisioner.spec.models import RolloutPolicy
from provisioner.states import next_rollout_status
from provisioner.store import audit
from provisioner.store.models import LeaseRow, RolloutNodeRow, RolloutRow
from provisioner.store.repo import Store, aware, now

log = logging.getLogger("provisioner.rollout.claims")

_R, _N, _L = RolloutRow.__table__, RolloutNodeRow.__table__, LeaseRow.__table__
BUSY, STOPPED = "busy", "stopped"  # another worker is claiming here; the rollout is not running


@dataclass(frozen=True)
class Claimed:
    rollout_id: int
    node: str
    keys: tuple[str, str]
    takeover: bool  # its last holder died mid-node: resumed from the record


def _lock_rollout(conn, rid: int):
    if conn.dialect.name == "postgresql":
        return conn.execute(select(_R).where(_R.c.id == rid).with_for_update(skip_locked=True, key_share=True)).first()
    conn.execute(update(_R).where(_R.c.id == rid).values(status=_R.c.status))  # SQLite: the write lock, first
    return conn.execute(select(_R).where(_R.c.id == rid)).first()


def _live(conn, keys: list[str], holder: str) -> dict[str, str]:
    """Of `keys`, those whose lease is live: key -> holder (ours included)."""
    if not keys:
        return {}
    at, out = now(), {}
    for i in range(0, len(keys), 500):
        for row in conn.execute(select(_L.c.key, _L.c.holder, _L.c.expires_at).where(_L.c.key.in_(keys[i:i + 500]))):
            if aware(row.expires_at) > at and (row.holder == holder or not _dead_here(row.holder)):
                out[row.key] = row.holder
    return out


def environment_held(store: Store, environment: str) -> bool:
    """An `apply` runs this environment's rollout in its own process (it holds the lease): hands off."""
    with store.db.read() as c:
        return bool(_live(c, [environment_key(environment)], ""))


def claim(store: Store, leases: Leases, rid: int, policy: RolloutPolicy, endpoints: dict, *, by: str,
          blocked: str = "") -> Claimed | str:
    """The next node of rollout `rid` this worker may run, its leases taken; or BUSY / STOPPED.
    `blocked`: why the release may not go on (a block covering one of its pins), if it may not."""
    got = claim_many(store, leases, rid, policy, endpoints, by=by, blocked=blocked, want=1)
    return got[0] if isinstance(got, list) else got


def claim_many(store: Store, leases: Leases, rid: int, policy: RolloutPolicy, endpoints: dict, *, by: str,
               blocked: str = "", want: int = 1) -> list[Claimed] | str:
    """Up to `want` nodes of rollout `rid`, in one transaction (a worker with free slots fills them
    with one look at the rollout, not one per slot); or BUSY / STOPPED when it got none."""
    try:
        with leases.tentative(), store.db.session() as s:  # held once committed, not before
            got = _claim(s, s.connection(), leases, rid, policy, endpoints, by, blocked, want)
    except RolloutBusy as e:  # a BMC taken between our look and our take: nothing was written
        log.info("worker.claim_busy rollout=%s reason=%s", rid, e)
        return BUSY
    return got or BUSY


def _live_claims(conn, holder: str) -> dict[str, str]:
    """Every live node and BMC lease: key -> holder (ours included). At most a few per node
    running anywhere, read through the index on expires_at; not an IN list per look."""
    at, out = now(), {}
    for row in conn.execute(select(_L.c.key, _L.c.holder).where(
            _L.c.expires_at > at, or_(_L.c.key.startswith("node:"), _L.c.key.startswith("bmc:")))):
        if row.holder == holder or not _dead_here(row.holder):
            out[row.key] = row.holder
    return out


def _claim(s, conn, leases: Leases, rid: int, policy: RolloutPolicy, endpoints: dict, by: str, blocked: str,
           want: int) -> list[Claimed] | str:
    r = _lock_rollout(conn, rid)
    if r is None:
        return BUSY
    if r.status != "running":
        return STOPPED
    rows = conn.execute(select(_N.c.node, _N.c.wave, _N.c.rack, _N.c.status, _N.c.error, _N.c.position)
                        .where(_N.c.rollout_id == rid, _N.c.status.in_(("pending", "running", "failed")))
                        .order_by(_N.c.wave, _N.c.position)).all()
    failed = [x for x in rows if x.status == "failed"]
    if len(failed) >= policy.failure_threshold:
        return _end(s, r, "halt", f"{len(failed)} node(s) failed (threshold {policy.failure_threshold}): "
                    + "; ".join(f"{x.node}: {x.error}" for x in sorted(failed)), by)
    if blocked:
        return _end(s, r, "halt", blocked, by)
    active = [x for x in rows if x.status in ("pending", "running") and x.wave >= 0]
    if not active:
        counts = dict(conn.execute(select(_N.c.status, func.count()).where(_N.c.rollout_id == rid)
                                   .group_by(_N.c.status)).all())
        held = counts.get("held", 0)
        return _end(s, r, "finish", f"{counts.get('done', 0)} node(s) at release {r.release_id[:12]}"
                    + (f", {held} held" if held else ""), by)
    running = [x for x in active if x.status == "running"]
    live = _live_claims(conn, leases.holder)
    orphans = [x for x in running if node_key(x.node) not in live]
    racks: dict[str, int] = {}
    for x in running:
        racks[x.rack] = racks.get(x.rack, 0) + 1
    wave = active[0].wave
    room = policy.max_concurrency - len(running)
    got: list[Claimed] = []
    for x in orphans + [x for x in active if x.status == "pending" and x.wave == wave]:
        if len(got) >= want:
            break
        fresh = x.status == "pending"
        if fresh and (room <= 0 or racks.get(x.rack, 0) >= policy.max_unavailable_per_rack):
            continue
        bmc = bmc_key(endpoints[x.node].address, endpoints[x.node].port)
        if bmc in live:
            continue  # a node on this BMC runs (here or elsewhere): one operation per BMC
        # Only if the node is as read: on PostgreSQL each statement sees the store as of its own
        # start, so a node that ended after the read of the nodes and before that of the leases
        # looks like a dead worker's; it is done, not to be run (and marked running) again. Marked
        # first, before its leases are taken, so such a node is passed over with nothing written.
        if conn.execute(update(_N).where(_N.c.rollout_id == rid, _N.c.node == x.node, _N.c.status == x.status)
                        .values(status="running", started_at=func.coalesce(_N.c.started_at, now()))).rowcount != 1:
            log.info("worker.claim_skip rollout=%s node=%s reason=changed while it was being claimed", rid, x.node)
            continue
        keys = (node_key(x.node), bmc)
        for key in keys:
            leases.take(conn, key, f"rollout {rid}: {x.node}")
        live[bmc] = live[keys[0]] = leases.holder
        if fresh:
            room -= 1
            racks[x.rack] = racks.get(x.rack, 0) + 1
        else:
            metrics.lease_takeover("node")
            log.warning("worker.takeover rollout=%s node=%s", rid, x.node)
        got.append(Claimed(rid, x.node, keys, not fresh))
    return got


def _end(s, r, event: str, reason: str, by: str) -> str:
    status = str(next_rollout_status(r.status, event))
    s.execute(update(_R).where(_R.c.id == r.id).values(status=status, finished_at=now(), reason=reason))
    audit.append(s, by, f"rollout.{status}", r.environment, {"rollout": r.id, "release": r.release_id,
                                                             "reason": reason})
    log.info("rollout.%s rollout=%s reason=%s", status, r.id, reason)
    return STOPPED
