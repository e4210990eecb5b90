"""`apply` with workers: record the rollout, hand it to the workers, and watch it to its end.

`pipeline.apply` creates or resumes the rollout record as always (taking the environment's lease
for that transaction), then asks `engine_class(ctx)` what runs it. When a `provisioner worker`
is alive on the store, it is a WatchedRollout: the environment's lease is let go (the workers
fence each node's writes by that node's lease), and the command follows the record, reporting
nodes as they end, until the rollout is done, halted or interrupted and no node runs. With no
worker alive (the embedded default, `make demo`, a one-host site) the engine runs in this process.
SIGINT/SIGTERM while watching marks the rollout interrupted: the workers start nothing new and
running nodes end their step (rollout/signals.py); `apply` resumes it.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from sqlalchemy import select, update

from provisioner.errors import StoreError
from provisioner.rollout.engine import RolloutEngine, RolloutResult
from provisioner.rollout.record import RolloutRecord
from provisioner.rollout.worker import live_workers
from provisioner.states import next_rollout_status
from provisioner.store import audit
from provisioner.store.models import RolloutNodeRow, RolloutRow
from provisioner.store.repo import now

log = logging.getLogger("provisioner.rollout")

IN_PROCESS_ENV = "PROVISIONER_IN_PROCESS"  # "1": run the engine here even when workers are alive


def engine_class(ctx):
    """What runs a rollout `apply` recorded: the workers when one is alive, else this process."""
    if os.environ.get(IN_PROCESS_ENV) == "1" or not live_workers(ctx.store):
        return RolloutEngine
    return WatchedRollout


class WatchedRollout:
    """Takes RolloutEngine's arguments; `run` follows the rollout the workers run."""

    def __init__(self, store, artifacts, endpoints, release, *, actor: str,
                 progress=None, leases=None, environment=None, poll: float = 0.5, **_):
        self.store, self.actor, self.leases, self.poll = store, actor, leases, poll
        self.progress = progress or (lambda e: None)
        self.record = RolloutRecord(store)  # unfenced: a second signal records `interrupted` through it
        self._interrupted = threading.Event()
        self._rid: int | None = None

    def interrupt(self) -> None:
        """First SIGINT/SIGTERM: the workers start nothing new; running steps end."""
        self._interrupted.set()
        if self._rid is not None:
            interrupt(self.store, self._rid, self.actor, "interrupted by a signal to the apply that watched it")

    def run(self, rid: int) -> RolloutResult:
        self._rid, started = rid, time.monotonic()
        if self.leases is not None:  # the workers take it from here
            self.leases.release_all()
        self.progress({"event": "handoff", "rollout": rid, "workers": len(live_workers(self.store))})
        seen: dict[str, str] = {}
        told_total = False
        while True:
            try:
                r, rows = self._read(rid)
            except StoreError as e:  # the store restarts: the workers carry on; look again
                log.warning("rollout.watch_retry rollout=%s error=%s", rid, e)
                time.sleep(1.0)
                continue
            if not told_total:
                self.progress({"event": "total", "nodes": len([x for x in rows if x.status != "held"]),
                               "done": len([x for x in rows if x.status in ("done", "failed")])})
                told_total = True
            for x in rows:
                if x.status != seen.get(x.node):
                    if x.status == "done":
                        self.progress({"event": "node_done", "node": x.node})
                    elif x.status == "failed":
                        self.progress({"event": "node_failed", "node": x.node, "error": x.error})
                    seen[x.node] = x.status
            try:
                if r.status != "running" and not self._still_running(rid, rows):
                    break
            except StoreError:
                pass
            time.sleep(self.poll)
        result = RolloutResult(rid, r.status, kind=r.kind, reason=r.reason or "",
                               done=[x.node for x in rows if x.status == "done"],
                               failed={x.node: x.error for x in rows if x.status == "failed"},
                               held=[x.node for x in rows if x.status == "held"],
                               halted={x.node: x.step or "prepare" for x in rows
                                       if r.status in ("halted", "interrupted") and x.status in ("pending", "running")})
        result.seconds = time.monotonic() - started
        self.progress({"event": result.status, "reason": result.reason})
        return result

    def _read(self, rid: int):
        # Core rows of the four columns followed, twice a second: not the rollout's every node as
        # ORM objects (1,000 of them per poll cost the watching process more than a worker's node)
        with self.store.db.read() as c:
            r = c.execute(select(RolloutRow.status, RolloutRow.kind, RolloutRow.reason)
                          .where(RolloutRow.id == rid)).one()
            rows = c.execute(select(RolloutNodeRow.node, RolloutNodeRow.status, RolloutNodeRow.error,
                                    RolloutNodeRow.step).where(RolloutNodeRow.rollout_id == rid)
                             .order_by(RolloutNodeRow.position)).all()
            return r, rows

    def _still_running(self, rid: int, rows) -> bool:
        """A node some live worker still runs (a dead worker's node waits for `apply` to resume)."""
        from provisioner.rollout.claims import _live
        from provisioner.rollout.lease import node_key

        running = [node_key(x.node) for x in rows if x.status == "running"]
        with self.store.db.read() as c:
            return bool(_live(c, running, ""))


def interrupt(store, rid: int, by: str, reason: str) -> bool:
    """Mark running rollout `rid` interrupted (the workers see it within a poll); False if it was not running."""
    with store.db.session() as s:
        r = s.get(RolloutRow, rid)
        if r is None or r.status != "running":
            return False
        status = str(next_rollout_status(r.status, "interrupt"))
        s.execute(update(RolloutRow).where(RolloutRow.id == rid, RolloutRow.status == "running")
                  .values(status=status, finished_at=now(), reason=reason))
        audit.append(s, by, f"rollout.{status}", r.environment, {"rollout": rid, "reason": reason})
    log.warning("rollout.interrupt rollout=%s by=%s", rid, by)
    return True
