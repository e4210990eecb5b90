"""The durable record of rollouts: every step is written before it begins and after it ends."""

from __future__ import annotations

from sqlalchemy import func, insert, select, update

from provisioner.plan import Plan
from provisioner.store import audit
from provisioner.store.models import NodeEventRow, RolloutNodeRow, RolloutRow, RolloutStepRow
from provisioner.store.repo import Store, aware, now


class RolloutRecord:
    def __init__(self, store: Store):
        self.store, self.db = store, store.db

    def open_rollout(self, environment: str, release_id: str) -> RolloutRow | None:
        """The unfinished rollout of this environment, if any (the one a new `apply` resumes)."""
        with self.db.session() as s:
            return s.scalars(select(RolloutRow).where(RolloutRow.environment == environment,
                                                      RolloutRow.status == "running")
                             .order_by(RolloutRow.id.desc())).first()

    def create(self, plan: Plan, kind: str, by: str, reason: str, canary: int, wave_size: int) -> int:
        todo = [n for n in plan.nodes if n.action not in ("nothing",)]
        with self.db.session() as s:
            for old in s.scalars(select(RolloutRow).where(RolloutRow.environment == plan.environment,
                                                          RolloutRow.status.in_(("running", "halted")))):
                old.status, old.finished_at = "superseded", now()
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
            return r.id

    def rollout(self, rid: int) -> RolloutRow:
        with self.db.session() as s:
            return s.get(RolloutRow, rid)

    def nodes(self, rid: int) -> list[RolloutNodeRow]:
        with self.db.session() as s:
            return list(s.scalars(select(RolloutNodeRow).where(RolloutNodeRow.rollout_id == rid)
                                  .order_by(RolloutNodeRow.position)))

    def set_node(self, rid: int, node: str, **fields) -> None:
        with self.db.write() as c:
            self._set_node(c, rid, node, fields)

    def step(self, rid: int, node: str, step: str, phase: str, details: dict | None = None) -> None:
        self.transition(rid, node, ended=None if phase == "begin" else (step, phase, details),
                        begin=step if phase == "begin" else None)

    def transition(self, rid: int, node: str, *, ended: tuple | None = None, begin: str | None = None,
                   **node_fields) -> None:
        """In one transaction: the row for the step that just ended, (step, phase, details) or
        (step, phase, details, when it ended), the row for the step about to begin, and any change
        to the node's rollout row. Each is committed before the engine goes on, so the log still
        holds every step before and after it happens."""
        at, rows = now(), []
        if ended is not None:
            step, phase, details, *when = ended
            rows.append({"rollout_id": rid, "node": node, "step": step, "phase": phase, "details": details or {},
                         "at": when[0] if when else at})
        if begin is not None:
            rows.append({"rollout_id": rid, "node": node, "step": begin, "phase": "begin", "details": {}, "at": at})
            node_fields["step"] = begin
        with self.db.write() as c:
            if rows:
                c.execute(insert(RolloutStepRow), rows)
            if node_fields:
                self._set_node(c, rid, node, node_fields)

    @staticmethod
    def _set_node(c, rid: int, node: str, fields: dict) -> None:
        if c.execute(update(RolloutNodeRow).where(RolloutNodeRow.rollout_id == rid, RolloutNodeRow.node == node)
                     .values(**fields)).rowcount != 1:
            raise LookupError(f"rollout {rid} has no node {node!r}")

    def finish(self, rid: int, status: str, reason: str, by: str) -> None:
        with self.db.session() as s:
            r = s.get(RolloutRow, rid)
            r.status, r.finished_at = status, now()
            if reason:
                r.reason = reason
            audit.append(s, by, f"rollout.{status}", r.environment, {"rollout": rid, "release": r.release_id,
                                                                     "reason": reason})

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
