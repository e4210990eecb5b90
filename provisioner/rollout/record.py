"""The durable record of rollouts: every step is written before it begins and after it ends."""

from __future__ import annotations

from contextlib import contextmanager, nullcontext

from sqlalchemy import bindparam, func, insert, select, update

from provisioner.plan import Plan
from provisioner.rollout.lease import Leases, environment_key, node_key
from provisioner.states import UNFINISHED, NodeRolloutStatus, next_rollout_status
from provisioner.store import audit
from provisioner.store.models import NodeEventRow, NodeRow, RolloutNodeRow, RolloutRow, RolloutStepRow
from provisioner.store.repo import Store, aware, now

_ADD_EVENT = insert(NodeEventRow.__table__)
_ADD_STEP = insert(RolloutStepRow.__table__)
_NODES = NodeRow.__table__
_ROLLOUT_NODES = RolloutNodeRow.__table__
_UPDATES: dict[tuple, object] = {}  # (table, fields) -> its UPDATE, built once: every step writes one


def _update(table, key: tuple, fields: tuple[str, ...]):
    """UPDATE `table` SET `fields` WHERE the `key` columns match, with bound parameters (v_FIELD,
    k_COLUMN), built once: SQLAlchemy then reuses its compiled form instead of building one per step."""
    stmt = _UPDATES.get((table.name, key, fields))
    if stmt is None:
        stmt = (update(table).where(*(table.c[k] == bindparam(f"k_{k}") for k in key))
                .values(**{f: bindparam(f"v_{f}", type_=table.c[f].type) for f in fields}))
        _UPDATES[(table.name, key, fields)] = stmt
    return stmt


class RolloutRecord:
    """Reads and writes of the rollout tables. Given `leases`, every write first checks (fences)
    the environment's lease in its own transaction: a holder that lost it writes nothing.
    `per_node` (a worker, rollout/worker.py): a node's writes fence that node's lease instead, as
    several workers share one environment."""

    def __init__(self, store: Store, leases: Leases | None = None, environment: str | None = None,
                 per_node: bool = False):
        self.store, self.db = store, store.db
        self.leases, self.key = leases, environment_key(environment) if environment else None
        self.per_node = per_node

    @contextmanager
    def write(self, node: str | None = None):
        with self.db.write() as c:
            if self.leases is not None:
                self.leases.fence(c, node_key(node) if self.per_node and node else self.key)
            yield c

    def fence(self, node: str):
        """The check `write(node)` starts with, for writes made elsewhere (store/boots.py); None unleased."""
        if self.leases is None:
            return None
        key = node_key(node) if self.per_node else self.key
        return lambda conn: self.leases.fence(conn, key)

    def open_rollout(self, environment: str) -> RolloutRow | None:
        """The unfinished (running, interrupted or halted) rollout of this environment, if any."""
        with self.db.session() as s:
            return s.scalars(select(RolloutRow).where(RolloutRow.environment == environment,
                                                      RolloutRow.status.in_([str(u) for u in UNFINISHED]))
                             .order_by(RolloutRow.id.desc())).first()

    def create(self, plan: Plan, kind: str, by: str, reason: str, canary: int, wave_size: int,
               point: tuple[str, str] | None = None) -> int:
        """Record a new rollout of `plan`, in one transaction with taking the environment's lease,
        superseding its unfinished rollouts, and (a rollback's `point`: reason, previous release)
        pointing the environment at the plan's release."""
        todo = [n for n in plan.nodes if n.action not in ("nothing",)]
        with self.db.session() as s:
            if self.leases is not None:
                self.leases.take(s.connection(), self.key, f"{kind} of {plan.release_id[:12]} to {plan.environment}")
            if point is not None:
                self.store.point_environment(plan.environment, plan.release_id, by, point[0], "env.rollback", session=s)
            for old in s.scalars(select(RolloutRow).where(RolloutRow.environment == plan.environment,
                                                          RolloutRow.status.in_([str(u) for u in UNFINISHED]))):
                old.status, old.finished_at = next_rollout_status(old.status, "supersede"), now()
                audit.append(s, by, "rollout.superseded", old.environment, {"rollout": old.id, "by_kind": kind})
            r = RolloutRow(environment=plan.environment, release_id=plan.release_id, kind=kind, status="running",
                           reason=reason, by=by, created_at=now())
            s.add(r)
            s.flush()
            # The canary goes first and should exercise the change: nodes whose firmware changes lead.
            actionable = sorted((n for n in todo if n.action != "hold"), key=lambda n: not n.flashes)
            for i, n in enumerate(todo):
                idx = actionable.index(n) if n in actionable else -1
                wave = 0 if 0 <= idx < canary else (1 + (idx - canary) // wave_size if idx >= 0 else -1)
                s.add(RolloutNodeRow(rollout_id=r.id, node=n.node, position=i, wave=wave, rack=n.rack,
                                     action=n.action, plan=n.as_dict(),
                                     status="held" if n.action == "hold" else "pending", step="", error=""))
            audit.append(s, by, f"rollout.{kind}", plan.environment,
                         {"rollout": r.id, "release": plan.release_id, "nodes": len(actionable),
                          "held": len(todo) - len(actionable), "reason": reason})
            s.flush()
            if self.leases is not None:
                self.leases.take(s.connection(), self.key, f"rollout {r.id} ({kind}) of {plan.environment}")
            return r.id

    def resume(self, rid: int, by: str, reason: str = "", retry_failed: bool = False) -> RolloutRow:
        """Take the environment's lease and mark rollout `rid` running again, in one transaction.
        `retry_failed` (an operator's `rollout resume`) puts its failed nodes back to pending."""
        with self.db.session() as s:
            if self.leases is not None:  # the first statement: a write, so SQLite takes its lock now
                self.leases.take(s.connection(), self.key, f"rollout {rid} of {self.key.partition(':')[2]}")
            r = s.get(RolloutRow, rid)
            before = r.status
            r.status, r.finished_at = next_rollout_status(r.status, "resume"), None
            if retry_failed:
                s.execute(update(RolloutNodeRow).where(RolloutNodeRow.rollout_id == rid,
                                                       RolloutNodeRow.status == NodeRolloutStatus.FAILED)
                          .values(status=str(NodeRolloutStatus.PENDING), error="", step=""))
            if before != "running" or reason:
                audit.append(s, by, "rollout.resume", r.environment, {"rollout": rid, "was": before, "reason": reason})
            s.flush()
            s.expunge(r)
            return r

    def abort(self, rid: int, by: str, reason: str) -> RolloutRow:
        """An operator gives a halted or interrupted rollout up: nodes not started are skipped."""
        with self.db.session() as s:
            if self.leases is not None:
                self.leases.take(s.connection(), self.key, f"abort of rollout {rid}")
            r = s.get(RolloutRow, rid)
            if r is None:
                raise LookupError(f"no rollout {rid}")
            r.status, r.finished_at = next_rollout_status(r.status, "abort"), now()
            s.execute(update(RolloutNodeRow).where(RolloutNodeRow.rollout_id == rid,
                                                   RolloutNodeRow.status == NodeRolloutStatus.PENDING)
                      .values(status=str(NodeRolloutStatus.SKIPPED)))
            audit.append(s, by, "rollout.abort", r.environment, {"rollout": rid, "reason": reason})
            if self.leases is not None:
                self.leases.release(s.connection(), self.key)
            s.flush()
            s.expunge(r)
            return r

    def rollout(self, rid: int) -> RolloutRow:
        with self.db.session() as s:
            return s.get(RolloutRow, rid)

    def nodes(self, rid: int) -> list[RolloutNodeRow]:
        with self.db.session() as s:
            return list(s.scalars(select(RolloutNodeRow).where(RolloutNodeRow.rollout_id == rid)
                                  .order_by(RolloutNodeRow.position)))

    def set_node(self, rid: int, node: str, **fields) -> None:
        with self.write(node) as c:
            self._set_node(c, rid, node, fields)

    def step(self, rid: int, node: str, step: str, phase: str, details: dict | None = None) -> None:
        self.transition(rid, node, ended=None if phase == "begin" else (step, phase, details),
                        begin=step if phase == "begin" else None)

    def transition(self, rid: int, node: str, *, ended: tuple | None = None, begin: str | None = None,
                   node_state: tuple | None = None, node_event: tuple | None = None, take: tuple[str, ...] = (),
                   release: tuple[str, ...] = (), **node_fields) -> None:
        """In one transaction: the row for the step that just ended, (step, phase, details) or
        (step, phase, details, when it ended), the row for the step about to begin, and any change
        to the node's rollout row. Each is committed before the engine goes on, so the log still
        holds every step before and after it happens. `node_state` (event, reason, fields) moves the
        node along its lifecycle in the same transaction, `node_event` (source, event, details) records
        what happened to it; `release` lets go of leases at the end."""
        at, rows = now(), []
        if ended is not None:
            step, phase, details, *when = ended
            rows.append({"rollout_id": rid, "node": node, "step": step, "phase": phase, "details": details or {},
                         "at": when[0] if when else at})
        if begin is not None:
            rows.append({"rollout_id": rid, "node": node, "step": begin, "phase": "begin", "details": {}, "at": at})
            node_fields["step"] = begin
        # taken leases count as held once this commits (Leases.tentative: the heartbeat meanwhile)
        with self.leases.tentative() if take else nullcontext(), self.write(node) as c:
            for key in take:  # the node's and its BMC's leases, with the node's first step
                self.leases.take(c, key, f"rollout {rid}: {node}")
            if rows:
                c.execute(_ADD_STEP, rows)
            if node_fields:
                self._set_node(c, rid, node, node_fields)
            if node_state is not None:
                event, reason, fields = node_state
                self.store.transition_node(node, event, reason, conn=c, **fields)
            if node_event is not None:
                c.execute(_ADD_EVENT, {"node": node, "at": at, "source": node_event[0], "event": node_event[1],
                                       "details": node_event[2] or {}})
            if release and self.leases is not None:
                self.leases.release(c, *release)

    def node_write(self, node: str, *, state: tuple | None = None, event: tuple | None = None,
                   expect_boot: tuple | None = None, **fields) -> None:
        """A fenced write of the node: its lifecycle edge `state` (event, reason), other fields,
        a node event (source, event, details), and the boot the rollout is about to power it on for
        (`expect_boot`: action, release; see BootLedger.expect), in one transaction."""
        if expect_boot is not None:
            self.store.boots.load_key()  # a first boot of the store makes its token key: a write of its own
        with self.write(node) as c:
            if state is not None:
                self.store.transition_node(node, state[0], state[1], conn=c, **fields)
            elif fields:
                fields["updated_at"] = now()
                c.execute(_update(_NODES, ("name",), tuple(sorted(fields))),
                          {"k_name": node, **{f"v_{k}": v for k, v in fields.items()}})
            if event is not None:
                c.execute(_ADD_EVENT, {"node": node, "at": now(), "source": event[0], "event": event[1],
                                       "details": event[2] or {}})
            if expect_boot is not None:
                self.store.boots.expect(node, *expect_boot, conn=c)

    @staticmethod
    def _set_node(c, rid: int, node: str, fields: dict) -> None:
        if c.execute(_update(_ROLLOUT_NODES, ("rollout_id", "node"), tuple(sorted(fields))),
                     {"k_rollout_id": rid, "k_node": node, **{f"v_{k}": v for k, v in fields.items()}}).rowcount != 1:
            raise LookupError(f"rollout {rid} has no node {node!r}")

    def finish(self, rid: int, event: str, reason: str, by: str) -> str:
        """End (or interrupt) the rollout along `event` (finish, halt, interrupt) and let go of this
        holder's leases, in one fenced transaction. Returns the new status."""
        with self.db.session() as s:
            if self.leases is not None:
                self.leases.fence(s.connection(), self.key)
            r = s.get(RolloutRow, rid)
            r.status = next_rollout_status(r.status, event)
            r.finished_at = now()
            if reason:
                r.reason = reason
            audit.append(s, by, f"rollout.{r.status}", r.environment, {"rollout": rid, "release": r.release_id,
                                                                       "reason": reason})
            if self.leases is not None:
                self.leases.release(s.connection(), *list(self.leases.held))
            return r.status

    def steps(self, rid: int) -> list[dict]:
        with self.db.session() as s:
            rows = s.scalars(select(RolloutStepRow).where(RolloutStepRow.rollout_id == rid).order_by(RolloutStepRow.seq))
            return [{"node": r.node, "step": r.step, "phase": r.phase, "details": r.details,
                     "at": aware(r.at)} for r in rows]

    def finished_steps(self, rid: int) -> dict[str, set[str]]:
        """Per node, the steps of rollout `rid` that ended (or were skipped): one query for the rollout."""
        out: dict[str, set[str]] = {}
        with self.db.session() as s:
            for node, step in s.execute(select(RolloutStepRow.node, RolloutStepRow.step).where(
                    RolloutStepRow.rollout_id == rid, RolloutStepRow.phase.in_(("end", "skip")))):
                out.setdefault(node, set()).add(step)
        return out

    def rollouts(self, environment: str | None = None, limit: int = 50) -> list[RolloutRow]:
        with self.db.session() as s:
            q = select(RolloutRow).order_by(RolloutRow.id.desc()).limit(limit)
            if environment:
                q = q.where(RolloutRow.environment == environment)
            return list(s.scalars(q))[::-1]

    def outcomes(self, release_id: str, environment: str) -> dict[str, int]:
        with self.db.session() as s:
            q = (select(RolloutNodeRow.status, func.count()).join(RolloutRow, RolloutRow.id == RolloutNodeRow.rollout_id)
                 .where(RolloutRow.release_id == release_id, RolloutRow.environment == environment)
                 .group_by(RolloutNodeRow.status))
            return {status: n for status, n in s.execute(q)}

    # -- node callbacks -------------------------------------------------------------------------
    def last_event_seq(self) -> int:
        with self.db.read() as c:
            return c.scalar(select(func.max(NodeEventRow.seq))) or 0

    def callbacks_after(self, seq: int) -> list[tuple[int, str, str, dict]]:
        """Every node's reports after event `seq`, oldest first: (seq, node, event, details)."""
        with self.db.read() as s:
            rows = s.execute(select(NodeEventRow.seq, NodeEventRow.node, NodeEventRow.event, NodeEventRow.details)
                             .where(NodeEventRow.seq > seq, NodeEventRow.source == "callback")
                             .order_by(NodeEventRow.seq))
            return [tuple(r) for r in rows]
