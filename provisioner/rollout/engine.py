"""Executing a rollout: canary, then waves; limits per rack, per BMC and overall; timeouts; auto-halt.

Per node the steps are (each idempotent, each recorded before and after in the store):

    prepare       read the BMC inventory afresh
    oob_flash     HPM.1 flash of components the manifest marks `hpm`, only where they differ
    inband_flash  one-time PXE + power cycle; the gate hands the flasher; wait for "flashed";
                  then a fresh BMC read must show every pin
    install       one-time PXE + power cycle; the gate hands the install profile; wait for "installed"
    boot_check    (reflash only) one-time PXE + power cycle; wait for "booted" from iPXE
    verify        a fresh BMC read equals the pins: the node is active at the release

A node that never reports back after power-on is presumed boot-looping and fails. When failed
nodes reach the policy's threshold, or a block covers a version the release pins, the rollout
halts: running nodes finish their current step, nothing new starts. Killed at any point, a new
run resumes from the record; a step re-checks the BMC before acting, so no node is flashed twice.

One process at a time works on an environment, a node and a BMC: the engine holds their leases
(rollout/lease.py) and every write it makes is fenced by the environment's lease. `interrupt()`
(the first SIGINT/SIGTERM) lets running steps end, starts nothing new, and records the rollout
`interrupted`; `apply` resumes it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from provisioner.drivers import BmcEndpoint, open_driver
from provisioner.drivers.base import BmcDriver
from provisioner.errors import DriverError, LeaseLost, RolloutBusy
from provisioner.netboot.gate import Blocked
from provisioner.observability import metrics
from provisioner.plan import boot_mode, pinned_blocked
from provisioner.releases.view import ReleaseView
from provisioner.rollout.callbacks import CallbackWatch
from provisioner.rollout.lease import Leases, bmc_key, node_key
from provisioner.rollout.record import RolloutRecord
from provisioner.rollout.recovery import NeedsHands, recover_out_of_band
from provisioner.spec.models import FirmwareComponent
from provisioner.states import STEPS, IllegalTransition, NodeRolloutStatus
from provisioner.store.repo import Store, now

log = logging.getLogger("provisioner.rollout")

__all__ = ["STEPS", "RolloutEngine", "RolloutResult"]
# the node state a step's boot sends the node to, as a lifecycle event
BOOT_EVENTS = {"flashing": "flash", "installing": "install", "verifying": "boot_check"}


class NodeFailed(Exception):
    pass


class Halted(Exception):
    pass


@dataclass
class RolloutResult:
    rollout_id: int
    status: str
    done: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    held: list[str] = field(default_factory=list)
    halted: dict[str, str] = field(default_factory=dict)  # node -> step it stopped before
    reason: str = ""
    seconds: float = 0.0
    kind: str = "apply"
    unread: dict[str, str] = field(default_factory=dict)  # node -> why its BMC could not be read: left alone

    def as_dict(self) -> dict:
        return {"rollout": self.rollout_id, "kind": self.kind, "status": self.status, "done": self.done,
                "failed": self.failed, "held": self.held, "interrupted": self.halted, "reason": self.reason,
                "seconds": round(self.seconds, 2), "unread": self.unread}


class RolloutEngine:
    def __init__(self, store: Store, artifacts, endpoints: dict[str, BmcEndpoint], release: ReleaseView, *,
                 actor: str,
                 progress: Callable[[dict], None] | None = None,
                 driver_factory: Callable[[BmcEndpoint], BmcDriver] = open_driver, poll: float = 0.1,
                 leases: Leases | None = None, environment: str | None = None):
        self.store, self.artifacts, self.endpoints = store, artifacts, endpoints
        self.leases = leases
        self.record = RolloutRecord(store, leases, environment)
        self.policy = release.policy.rollout
        self.timeouts = self.policy.timeouts
        self.release, self.release_id = release, release.id
        self.actor, self.progress = actor, metrics.observed_progress(progress)
        self.driver_factory, self.poll = driver_factory, poll
        self._halt = threading.Event()
        self._halt_reason = ""
        self._interrupted = threading.Event()  # first SIGINT/SIGTERM: nothing new starts
        self._lost: str = ""
        self._blocks_at, self._blocks = 0.0, []
        self._lock = threading.Lock()
        self._last_read: dict[str, dict] = {}
        self._finished: dict[str, set[str]] = {}
        self.callbacks = CallbackWatch(self.record, poll)

    def interrupt(self) -> None:
        """Start nothing new; running steps reach their end; the rollout is then recorded interrupted."""
        self._interrupted.set()
        self._trip("interrupted by a signal: running steps end, nothing new starts")

    # -- the whole rollout ----------------------------------------------------------------------
    def run(self, rid: int) -> RolloutResult:
        started = time.monotonic()
        rows = self.record.nodes(rid)
        self._finished = self.record.finished_steps(rid)  # read once: only this run adds to it
        result = RolloutResult(rid, "running", held=[r.node for r in rows if r.status == "held"],
                               kind=self.record.rollout(rid).kind)
        result.done = [r.node for r in rows if r.status == "done"]
        result.failed = {r.node: r.error for r in rows if r.status == "failed"}
        for r in rows:
            if r.status == "held":
                try:
                    self.record.node_write(r.node, state=("hold", r.plan["reason"]))
                except IllegalTransition:  # in maintenance or needs-hands: it keeps that state
                    pass
        self.progress({"event": "total", "nodes": len([r for r in rows if r.status != "held"]),
                       "done": len(result.done) + len(result.failed)})
        waves = sorted({r.wave for r in rows if r.status in ("pending", "running")})
        for wave in waves:
            if self._should_halt(result):
                break
            todo = [r for r in rows if r.wave == wave and r.status in ("pending", "running")]
            self.progress({"event": "wave", "wave": wave, "nodes": [r.node for r in todo]})
            self._run_wave(rid, todo, result)
        if self._lost:
            self.progress({"event": "lost", "reason": self._lost})
            raise LeaseLost(self._lost)
        if self._interrupted.is_set():
            event, result.reason = "interrupt", self._halt_reason
        elif self._should_halt(result) or result.halted:
            event, result.reason = "halt", self._halt_reason or self._failure_reason(result)
        else:
            event = "finish"
            result.reason = f"{len(result.done)} node(s) at release {self.release_id[:12]}" + (
                f", {len(result.held)} held" if result.held else "")
        result.status = self.record.finish(rid, event, result.reason, self.actor)
        result.seconds = time.monotonic() - started
        self.progress({"event": result.status, "reason": result.reason})
        return result

    def _failure_reason(self, result: RolloutResult) -> str:
        return "; ".join(f"{n}: {e}" for n, e in sorted(result.failed.items()))

    def _should_halt(self, result: RolloutResult) -> bool:
        if self._halt.is_set():
            return True
        if len(result.failed) >= self.policy.failure_threshold:
            self._trip(f"{len(result.failed)} node(s) failed (threshold {self.policy.failure_threshold}): "
                       + self._failure_reason(result))
            return True
        bad = self._blocked_pins()
        if bad:
            m, c, v, b = bad[0]
            self._trip(f"release pins {m} {c} {v}, blocked since the rollout started: {b.reason}")
            return True
        return False

    def _trip(self, reason: str) -> None:
        with self._lock:
            if not self._halt.is_set():
                self._halt_reason = reason
                self._halt.set()
                log.warning("rollout.halt reason=%s", reason)

    def _blocked_pins(self, max_age: float = 0.5):
        t = time.monotonic()
        if t - self._blocks_at > max_age:  # a block from another process is seen within half a second
            self._blocks = [Blocked(b["component"], b["version"], b["reason"], b["model"])
                            for b in self.store.active_blocks()]
            self._blocks_at = t
        return pinned_blocked(self.release, self._blocks)

    def _run_wave(self, rid: int, todo, result: RolloutResult) -> None:
        limit, per_rack = self.policy.max_concurrency, self.policy.max_unavailable_per_rack
        queue, running, busy_racks = list(todo), {}, {}
        with ThreadPoolExecutor(max(1, min(limit, len(todo)))) as pool:
            while queue or running:
                while queue and len(running) < limit and not self._should_halt(result):
                    pick = next((r for r in queue if busy_racks.get(r.rack, 0) < per_rack), None)
                    if pick is None:
                        break
                    queue.remove(pick)
                    busy_racks[pick.rack] = busy_racks.get(pick.rack, 0) + 1
                    running[pool.submit(self._run_node, rid, pick, result)] = pick
                if not running:
                    break
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for f in finished:
                    r = running.pop(f)
                    busy_racks[r.rack] -= 1
                    f.result()

    # -- one node -------------------------------------------------------------------------------
    def _node_keys(self, node: str) -> tuple[str, ...]:
        ep = self.endpoints[node]
        return (node_key(node), bmc_key(ep.address, ep.port)) if self.leases is not None else ()

    def _run_node(self, rid: int, row, result: RolloutResult) -> None:
        # another process working on this node or its BMC (e.g. a crashed holder's node lease, not
        # yet expired): wait for it, within twice the lease time, before calling the rollout halted
        deadline = time.monotonic() + (2 * self.leases.seconds if self.leases is not None else 0)
        while True:
            try:
                return self._run_node_leased(rid, row, result)
            except LeaseLost as e:  # another process took the environment over: stop, write nothing
                self._lost = str(e)
                self._trip(str(e))
                return
            except RolloutBusy as e:
                if time.monotonic() < deadline and not self._halt.is_set():
                    time.sleep(min(1.0, self.leases.seconds / 3))
                    continue
                with self._lock:
                    result.halted[row.node] = row.step or "prepare"
                self.progress({"event": "node_halted", "node": row.node, "step": f"start ({e})"})
                self._trip(f"{row.node}: {e}")
                return
            except IllegalTransition as e:  # its state changed under the rollout (e.g. needs-hands)
                msg = f"{row.step or 'start'}: {e}"
                self.record.transition(rid, row.node, status=str(NodeRolloutStatus.FAILED), error=msg,
                                       finished_at=now(), release=self._node_keys(row.node))
                with self._lock:
                    result.failed[row.node] = msg
                self.progress({"event": "node_failed", "node": row.node, "error": msg})
                self._should_halt(result)
                return

    def _run_node_leased(self, rid: int, row, result: RolloutResult) -> None:
        node, steps = row.node, STEPS[row.action]
        done_steps = self._finished.get(node, set())
        keys = self._node_keys(node)
        starting = {"status": str(NodeRolloutStatus.RUNNING), "started_at": row.started_at or now(), "take": keys}
        self.progress({"event": "node_start", "node": node, "action": row.action, "wave": row.wave})
        driver = self.driver_factory(self.endpoints[node])
        current = row.step or steps[0]
        ended = None  # (step, phase, details, at) of the step just done, written with the next begin
        try:
            for step in steps:
                if step in done_steps and step not in ("prepare", "verify"):
                    continue
                # read the blocks afresh: one issued while this node ran its last step stops it here,
                # before it flashes the version (the wave loop only looks between nodes)
                if self._halt.is_set() or (self._blocked_pins(max_age=0.0) and self._should_halt(result)):
                    self.record.transition(rid, node, ended=ended, status=str(NodeRolloutStatus.PENDING),
                                           release=keys if not starting else ())
                    ended = None
                    with self._lock:
                        result.halted[node] = step
                    self.progress({"event": "node_halted", "node": node, "step": step})
                    return
                current = step
                # one transaction: the last step's end, this step's begin (and, first, the node running)
                self.record.transition(rid, node, ended=ended, begin=step, **starting)
                ended, starting = None, {}
                self.progress({"event": "node_step", "node": node, "step": step})
                details = self._with_retries(lambda s=step: getattr(self, f"_step_{s}")(driver, row), node, step)
                ended = (step, "skip" if details.get("skipped") else "end", details, now())
            # verified: the node's state and event go with the step's end, in one transaction
            verified = current == "verify"
            self.record.transition(rid, node, ended=ended, status=str(NodeRolloutStatus.DONE), finished_at=now(),
                                   step="", release=keys, node_state=(
                                       "verified", f"verified at release {self.release_id[:12]}",
                                       {"release_id": self.release_id, "healthy_since": now()}) if verified else None,
                                   node_event=("rollout", "verified", {"release": self.release_id}) if verified else None)
            ended = None
            with self._lock:
                result.done.append(node)
            self.progress({"event": "node_done", "node": node})
        except (NodeFailed, DriverError, NeedsHands) as e:
            msg = str(e)
            # the event first: a worker's writes are fenced by the node's lease, let go just below
            self.record.node_write(node, event=("rollout", "failed", {"rollout": rid, "error": msg}))
            self.record.transition(rid, node, ended=(current, "error", {"error": msg}),
                                   status=str(NodeRolloutStatus.FAILED), error=msg, finished_at=now(),
                                   node_state=(getattr(e, "node_event", "fail"), msg, {}), release=keys)
            with self._lock:
                result.failed[node] = msg
            self.progress({"event": "node_failed", "node": node, "error": msg})
            self._should_halt(result)
        finally:
            driver.close()

    def _with_retries(self, fn, node: str, step: str, attempts: int = 3) -> dict:
        for attempt in range(1, attempts + 1):
            try:
                return fn() or {}
            except DriverError as e:
                if not e.retryable or attempt == attempts:
                    raise NodeFailed(f"{step}: {e.__class__.__name__}: {e}") from None
                log.warning("rollout.retry node=%s step=%s attempt=%d error=%s", node, step, attempt, e)
                time.sleep(0.2 * 2 ** attempt)
        return {}

    def _pins(self, row) -> tuple[FirmwareComponent, ...]:
        return self.release.pins(row.plan["model"]) or ()

    def _check_lease(self) -> None:
        """Before acting on a BMC: a holder frozen past its lease (another may have taken over) stops."""
        if self.leases is not None:
            self.leases.check()

    def _read(self, driver: BmcDriver, node: str) -> dict[str, str]:
        fw = driver.firmware_inventory()  # always a fresh read; the store is written only on change
        if self._last_read.get(node) != fw:
            self.record.node_write(node, observed=fw, observed_at=now())
            self._last_read[node] = fw
        return fw

    def _differing(self, driver, row, fresh: bool = True) -> list[FirmwareComponent]:
        """Components not at their pin. Before acting, the read of this run's `prepare` will do
        (nothing changed the node since); after any flash, and to verify, the BMC is read afresh."""
        fw = self._last_read.get(row.node) if not fresh else None
        if fw is None:
            fw = self._read(driver, row.node)
        return [c for c in self._pins(row) if fw.get(c.name) != c.version]

    def _step_prepare(self, driver, row) -> dict:
        return {"firmware": self._read(driver, row.node)}

    def _step_oob_flash(self, driver, row) -> dict:
        # a node that cannot netboot gets its in-band components through the BMC, or needs hands
        def announce(event: str, details: dict) -> None:  # as every flash: a fenced write, then the lease
            self.record.node_write(row.node, event=("rollout", event, details))
            self._check_lease()

        flashed = recover_out_of_band(self.store, self.artifacts, driver, row.node, row.plan["model"],
                                      self._differing(driver, row, fresh=False), self.endpoints[row.node].key,
                                      announce)
        if flashed:
            self._last_read.pop(row.node, None)
        for c in self._differing(driver, row, fresh=False):
            if c.method != "hpm" or not driver.supports_oob_flash(c.name):
                continue
            image = self.artifacts.read(c.image.sha256)  # verified against its digest on read
            self.record.node_write(row.node, event=("rollout", "oob_flash", {"component": c.name, "version": c.version}))
            self._check_lease()
            driver.flash(c.name, image, c.image.sha256, c.version)  # verifies by a fresh read
            self._last_read.pop(row.node, None)
            flashed.append(f"{c.name} {c.version}")
        return {"flashed": flashed} if flashed else {"skipped": True}

    def _boot_and_wait(self, driver, row, state: str, wanted: set[str], timeout: float, what: str) -> dict:
        # with the state, the one boot whose reports count: fetching the script again hands out its token
        self.record.node_write(row.node, state=(BOOT_EVENTS[state], f"rollout: {what}"), expect_boot=(
            {"flashing": "flash", "installing": "install"}.get(state, "local"), self.release_id))
        inbox = self.callbacks.subscribe(row.node)
        try:
            self._check_lease()
            driver.set_one_time_boot("pxe", mode=row.plan.get("boot_mode") or boot_mode(self.release, row.node))
            driver.power_cycle()  # the contract: a server that is off is powered on (one status read less)
            deadline = time.monotonic() + timeout
            while (left := deadline - time.monotonic()) > 0:
                try:
                    event, details = inbox.get(timeout=left)
                except queue.Empty:
                    break
                if event in wanted:
                    return {"callback": event}
                if event == "failed":
                    raise NodeFailed(f"{what}: node reported failure: {details.get('error', '?')}")
        finally:
            self.callbacks.unsubscribe(row.node)
            self.store.boots.end(row.node, fence=self.record.fence(row.node))  # late reports change nothing
        raise NodeFailed(f"{what}: no report within {timeout:.0f}s after power-on; presumed boot-looping")

    def _step_inband_flash(self, driver, row) -> dict:
        if not self._differing(driver, row, fresh=False):
            return {"skipped": True}
        t = self.timeouts
        out = self._boot_and_wait(driver, row, "flashing", {"flashed"}, t.power + t.boot + t.flash,
                                  "in-band flash")
        left = self._differing(driver, row)  # never trust the flasher's word alone
        if left:
            raise NodeFailed("after flashing the BMC reports " + ", ".join(
                f"{c.name} {self.store.node(row.node).observed.get(c.name)} (pinned {c.version})" for c in left))
        return out

    def _step_boot_check(self, driver, row) -> dict:
        t = self.timeouts
        return self._boot_and_wait(driver, row, "verifying", {"booted"}, t.power + t.boot, "boot check")

    def _step_install(self, driver, row) -> dict:
        if self.store.node(row.node).installed_release == self.release_id:
            # the image is there (e.g. a rollback, or resumed after the installer reported); still see
            # the node come up on the firmware just flashed: a re-provision never ends unbooted
            return self._step_boot_check(driver, row)
        t = self.timeouts
        return self._boot_and_wait(driver, row, "installing", {"installed"}, t.power + t.boot + t.callback,
                                   "install")

    def _step_verify(self, driver, row) -> dict:
        left = self._differing(driver, row)
        if left:
            raise NodeFailed("verify: BMC reports " + ", ".join(
                f"{c.name} {self.store.node(row.node).observed.get(c.name)} (pinned {c.version})" for c in left))
        return {"verified": True}  # the node is marked verified with this step's end (see _run_node_leased)
