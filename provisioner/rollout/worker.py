"""`provisioner worker`: the rollout engine as a service; any number of workers on any hosts share the store.

A worker registers itself (a lease `worker:HOLDER`, renewed by its heartbeat, so `apply` knows a
worker is alive and hands its rollout over), then loops: for every running rollout that no
`apply` runs in its own process, it claims node operations through the store (rollout/claims.py:
the limits hold over all workers) and runs each node in a thread of its own with the engine's
step functions. Every write of a node is fenced by that node's lease: a worker killed mid-node
leaves a lease that expires, and another worker takes the node over from its record, reading the
BMC before acting; a worker frozen past its lease (SIGSTOP, a VM paused) writes nothing more and
exits EXIT_LEASE_LOST (systemd restarts it with a new holder id).

A rollout that stops running (halted by any worker, interrupted by the operator) is seen within a
poll: running nodes end their current step, nothing new starts.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

from sqlalchemy import select

from provisioner.errors import LeaseLost, StoreError
from provisioner.observability import metrics
from provisioner.releases.view import ReleaseView
from provisioner.rollout import claims
from provisioner.rollout.engine import RolloutEngine, RolloutResult
from provisioner.rollout.lease import Leases
from provisioner.store.models import RolloutNodeRow, RolloutRow, RolloutStepRow

log = logging.getLogger("provisioner.worker")

EXIT_LEASE_LOST = 75  # EX_TEMPFAIL: this process lost a lease; a new one (new holder id) may go on
WORKER_PREFIX = "worker:"


def live_workers(store) -> list[str]:
    """Holders of the workers alive now (their registration lease is not expired)."""
    from provisioner.store.models import LeaseRow
    from provisioner.store.repo import aware, now

    at = now()
    with store.db.read() as c:
        rows = c.execute(select(LeaseRow.key, LeaseRow.expires_at).where(LeaseRow.key.like(WORKER_PREFIX + "%")))
        return [k.removeprefix(WORKER_PREFIX) for k, exp in rows if aware(exp) > at]


class Worker:
    def __init__(self, ctx, *, slots: int = 16, poll: float = 0.5, lease_seconds: float | None = None,
                 say=lambda text: None):
        from provisioner.pipeline import endpoints

        self.ctx, self.store = ctx, ctx.store
        self.leases = Leases(ctx.store, seconds=lease_seconds)
        self.slots, self.poll, self.say = slots, poll, say
        self.endpoints = endpoints(ctx)
        self.actor = f"worker {self.leases.holder}"
        self.engines: dict[int, RolloutEngine] = {}
        self.inflight: dict[Future, tuple[int, str]] = {}
        self._stop = threading.Event()

    @property
    def key(self) -> str:
        return WORKER_PREFIX + self.leases.holder

    def stop(self) -> None:
        """Claim nothing new; running nodes end (a node mid-step is taken over by another worker
        if this process is stopped harder)."""
        self._stop.set()

    def run(self, until=None) -> int:
        """Work until stop() (or `until()` is true); 0, or EXIT_LEASE_LOST when a lease was lost."""
        self._register()
        log.info("worker.start holder=%s slots=%d lease_seconds=%.1f", self.leases.holder, self.slots,
                 self.leases.seconds)
        pool = ThreadPoolExecutor(self.slots, thread_name_prefix="node")
        try:
            while not self._stop.is_set() and not (until and until()):
                try:
                    self.leases.check()
                    self._claim_round(pool)
                except LeaseLost:
                    if self.inflight or not self._fresh_identity():
                        break
                except Exception:  # the store went away (a restart): keep the nodes running, try again
                    log.exception("worker.claim_failed")
                self._reap(self.poll)
        finally:
            if self.leases.lost:
                log.error("worker.lease_lost holder=%s: stopping without writing; %s", self.leases.holder,
                          self.leases.lost)
                self.say(f"error: {self.leases.lost}")
                # nothing of ours may be written now: threads still waiting on a BMC or a callback
                # would only fail their fences; end the process as a crash would
                self.leases.stop()
                logging.shutdown()
                os._exit(EXIT_LEASE_LOST)
            while self.inflight:
                self._reap(1.0)
            pool.shutdown()
            self.leases.stop()
            self.leases.release_all()
        return 0

    def _register(self) -> None:
        with self.store.db.write() as c:
            self.leases.take(c, self.key, f"rollout worker, {self.slots} slot(s)")
        self.leases.renew()  # the lease time counts from now, not from this object's creation
        self.leases.start_heartbeat()

    def _fresh_identity(self) -> bool:
        """Leases lost while no node ran (e.g. the store was away past the lease time): nothing of
        ours is in flight, so go on as a new holder instead of exiting. False if the store is still away."""
        old = self.leases
        try:
            self.leases = Leases(self.store, seconds=old.seconds)
            self.engines.clear()  # they hold the old leases
            self._register()
        except StoreError:
            self.leases = old
            time.sleep(min(1.0, old.seconds / 4))
            return True  # try again on the next turn (check() raises again until then)
        old.stop()
        self.actor = f"worker {self.leases.holder}"
        log.warning("worker.new_identity was=%s now=%s: leases lost while idle (%s)", old.holder,
                    self.leases.holder, old.lost)
        return True

    # -- claiming -------------------------------------------------------------------------------
    def _running_rollouts(self) -> list:
        with self.store.db.read() as c:
            return c.execute(select(RolloutRow.id, RolloutRow.environment, RolloutRow.release_id)
                             .where(RolloutRow.status == "running").order_by(RolloutRow.id)).all()

    def _claim_round(self, pool) -> None:
        running = self._running_rollouts()
        ids = {r.id for r in running}
        for rid in list(self.engines):
            if rid not in ids:  # halted, interrupted, aborted or done: running steps end, nothing new
                self.engines[rid].interrupt()
                if not any(r == rid for r, _ in self.inflight.values()):
                    self.engines.pop(rid)
        for r in running:
            if len(self.inflight) >= self.slots:
                return
            if claims.environment_held(self.store, r.environment):
                continue  # an `apply` runs this rollout in its own process
            engine = self._engine(r)
            while len(self.inflight) < self.slots:
                got = claims.claim_many(self.store, self.leases, r.id, engine.policy, self.endpoints, by=self.actor,
                                        blocked=self._blocked(engine), want=self.slots - len(self.inflight))
                if not isinstance(got, list):
                    break
                for one in got:
                    metrics.worker_claim("takeover" if one.takeover else "new")
                    self.inflight[pool.submit(self._run_node, engine, one)] = (r.id, one.node)

    def _engine(self, r) -> RolloutEngine:
        engine = self.engines.get(r.id)
        if engine is None:
            rel = self.store.get_release(r.release_id)
            engine = RolloutEngine(self.store, self.ctx.artifacts, self.endpoints, ReleaseView.of(rel),
                                   actor=self.actor, leases=self.leases)
            engine.record.per_node = True  # workers share the environment: each node's lease fences its writes
            self.engines[r.id] = engine
        return engine

    @staticmethod
    def _blocked(engine: RolloutEngine) -> str:
        bad = engine._blocked_pins()
        if not bad:
            return ""
        m, c, v, b = bad[0]
        return f"release pins {m} {c} {v}, blocked since the rollout started: {b.reason}"

    # -- running a node -------------------------------------------------------------------------
    def _run_node(self, engine: RolloutEngine, got: claims.Claimed) -> None:
        rid, node = got.rollout_id, got.node
        with self.store.db.session() as s:
            row = s.get(RolloutNodeRow, (rid, node))
            done = set(s.scalars(select(RolloutStepRow.step).where(
                RolloutStepRow.rollout_id == rid, RolloutStepRow.node == node,
                RolloutStepRow.phase.in_(("end", "skip")))))
        engine._finished[node] = done  # a node taken over goes on from its record
        log.info("worker.node rollout=%s node=%s takeover=%s resumes_after=%s", rid, node, got.takeover,
                 ",".join(sorted(done)) or "-")
        try:
            engine._run_node(rid, row, RolloutResult(rid, "running"))
        except StoreError as e:  # e.g. PostgreSQL restarting: let go, and the node is claimed again
            log.warning("worker.node_interrupted rollout=%s node=%s error=%s", rid, node, e)
        left = [k for k in got.keys if k in self.leases.held]
        while left and not self.leases.lost:  # a node that stopped before its first step keeps its leases
            try:
                with self.store.db.write() as c:
                    self.leases.release(c, *left)
                return
            except StoreError:  # the store is away: the lease would only expire; try again shortly
                time.sleep(min(1.0, self.leases.seconds / 4))

    def _reap(self, timeout: float) -> None:
        if not self.inflight:
            time.sleep(timeout)
            return
        finished, _ = wait(list(self.inflight), timeout=timeout, return_when=FIRST_COMPLETED)
        for f in finished:
            rid, node = self.inflight.pop(f)
            try:
                f.result()
            except LeaseLost:
                pass
            except Exception:
                log.exception("worker.node_error rollout=%s node=%s", rid, node)
