"""Two operators at once on a small real site, with BMC faults: random sequences of concurrent
apply, rollback, block, promote and kill -9 (hypothesis' RuleBasedStateMachine), checked against
what the simulated BMCs logged:

- no BMC ever runs two operations at once (nothing else happens to it between the start of an HPM
  upload and its end);
- no blocked version is flashed by a step that began after the block was recorded;
- no component is flashed to the version it already runs.

Refusals (busy, halted, blocked) are outcomes, not failures: the invariants are what must hold.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from helpers import copy_spec
from hypothesis import HealthCheck, Phase, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from pipeline_site import LOOP_TIMEOUTS, Site, tune_spec

from provisioner import pipeline
from provisioner.context import Context, Settings
from provisioner.demo import bump_bios
from provisioner.errors import ProvisionerError
from provisioner.netboot.gate import Blocked
from provisioner.rollout.record import RolloutRecord

NODES = ["s1n01", "s1n03"]  # an r650 and a dl360g10
MODEL = {"s1n01": "r650", "s1n03": "dl360g10"}
FLASHES = ("activated", "inband_flash")  # what the pipeline changes (hand_flash is the test's own)
ACTIONS = ["apply", "rollback", "promote_other", "block", "kill", "abort", "slow_bmc"]
BLOCKABLE = [("bios", "2.90.0", "dl360g10"), ("bios", "2.80.0", "dl360g10"), ("nic", "14.32.1", None)]


class TwoOperators(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="operators-"))
        spec = tune_spec(copy_spec(self.tmp / "spec"), nodes=set(NODES), rollout={"timeouts": LOOP_TIMEOUTS})
        self.site = Site(spec, self.tmp / "data", Context(Settings(spec_dir=spec, data_dir=self.tmp / "data",
                                                                   actor="alice")))
        self.site.start_lab()
        self.fw_at_start = self.site.firmware()
        self.blocks: list[tuple[float, Blocked]] = []  # (recorded by, block)
        self.outcomes: list[str] = []

    def teardown(self):
        self.site.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)

    @initialize()
    def two_releases(self):
        self.r1 = self.site.build()
        spec2 = self.tmp / "spec-v2"
        bump_bios(self.site.spec, spec2)
        self.spec2 = spec2
        self.r2 = self.site.build(spec2)
        pipeline.promote(self.site.ctx, self.r1, "staging")
        self.two_operators_at_once("apply", "apply", 0)  # every run starts with the two shells

    # -- what one operator does ---------------------------------------------------------------------
    def act(self, who: str, action: str, rnd: random.Random) -> None:
        ctx = self.site.context(actor=who)
        try:
            if action == "apply":
                pipeline.apply(ctx, "staging")
            elif action == "rollback":
                pipeline.rollback(ctx, "staging")
            elif action == "promote_other":
                current = ctx.store.current_release_id("staging")
                pipeline.promote(ctx, self.r2 if current == self.r1 else self.r1, "staging")
                pipeline.apply(ctx, "staging")
            elif action == "block":
                comp, version, model = rnd.choice(BLOCKABLE)
                pipeline.block(ctx, comp, version, "operators test", model=model)
                self.blocks.append((time.time(), Blocked(comp, version, "operators test", model)))
            elif action == "kill":
                self.apply_and_kill(rnd.uniform(0.3, 3.0))
            elif action == "abort":  # on call gives a halted rollout up
                open_ = RolloutRecord(ctx.store).open_rollout("staging")
                if open_ is not None and open_.status == "halted":
                    pipeline.abort(ctx, open_.id, "operators test: give up")
            elif action == "slow_bmc":
                self.site.lab.site.set_fault(rnd.choice(NODES), delay_s=rnd.choice([0.0, 0.05, 0.3]))
            self.outcomes.append(f"{who} {action}: ok")
        except ProvisionerError as e:  # busy, halted, blocked: refused as designed
            self.outcomes.append(f"{who} {action}: {type(e).__name__}")

    def apply_and_kill(self, after: float) -> None:
        e = {**os.environ, "PROVISIONER_SPEC": str(self.site.spec), "PROVISIONER_DATA": str(self.site.data)}
        e.pop("PROVISIONER_DB", None)
        proc = subprocess.Popen([sys.executable, "-m", "provisioner", "apply", "staging"], env=e,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            proc.wait(after)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)

    @rule(a=st.sampled_from(ACTIONS), b=st.sampled_from(ACTIONS), seed=st.integers(0, 2**16))
    def two_operators_at_once(self, a, b, seed):
        rnd = random.Random(seed)
        threads = [threading.Thread(target=self.act, args=(who, action, random.Random(rnd.random())))
                   for who, action in (("alice", a), ("bob", b))]
        for t in threads:
            t.start()
            time.sleep(rnd.uniform(0, 0.3))
        for t in threads:
            t.join(300)
        for outcome in self.outcomes[-2:]:
            event(outcome.split(" ", 1)[1])

    # -- what must hold ------------------------------------------------------------------------------
    @invariant()
    def no_bmc_runs_two_operations_at_once(self):
        for node in NODES:
            uploading = None
            for e in self.site.bmc_log(node):
                if e["event"] in ("activated", "staged", "rejected", "flash_aborted"):  # staged: Redfish OnReset
                    uploading = None
                elif e["event"] in ("upload_started", "power", "boot_override"):
                    assert uploading is None, (node, uploading, e, self.outcomes)
                    if e["event"] == "upload_started":
                        uploading = e

    @invariant()
    def no_component_is_flashed_to_the_version_it_runs_nor_to_a_blocked_one(self):
        begins = [(s["at"].timestamp(), s["node"]) for r in RolloutRecord(self.site.ctx.store).rollouts()
                  for s in RolloutRecord(self.site.ctx.store).steps(r.id)
                  if s["phase"] == "begin" and s["step"] in ("oob_flash", "inband_flash")]
        for node in NODES:
            fw = dict(self.fw_at_start[node])
            for e in self.site.bmc_log(node):
                if e["event"] not in (*FLASHES, "hand_flash"):
                    continue
                if e["event"] in FLASHES:
                    assert fw.get(e["component"]) != e["version"], ("flashed to what it runs", node, e)
                    began = max((t for t, n in begins if n == node and t <= e["at"] + 0.01), default=0.0)
                    assert not [b for t, b in self.blocks if t < began and b.applies(MODEL[node], e["component"],
                                                                                      e["version"])], (node, e)
                fw[e["component"]] = e["version"]


TestTwoOperators = TwoOperators.TestCase
TestTwoOperators.settings = settings(max_examples=3, stateful_step_count=4, deadline=None,
                                     phases=[Phase.explicit, Phase.reuse, Phase.generate],
                                     suppress_health_check=[HealthCheck.too_slow])
