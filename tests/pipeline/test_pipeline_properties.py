"""No sequence of spec changes, blocks, rollbacks and hand flashes ever flashes or installs a blocked
version.

Three levels: single calls of the pure parts (plan, netboot gate, staging gate) on random inputs;
random sequences of operations driving only the pure parts; and a few short random sequences
against the real pipeline on a small simulated site (real IPMI, real netboot on loopback).
"""

from __future__ import annotations

import copy
import hashlib
import re
import shutil
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml
from helpers import REPO, copy_spec
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from pipeline_site import Site, tune_spec

from provisioner import pipeline
from provisioner.context import Context, Settings
from provisioner.errors import PolicyViolation
from provisioner.netboot.gate import Blocked, decide, find_blocked, release_blocklist
from provisioner.plan import Observed, make_plan, pinned_blocked
from provisioner.policy.gate import StagingNode, evaluate
from provisioner.releases.build import freeze
from provisioner.releases.view import ReleaseView
from provisioner.spec.loader import load_spec
from provisioner.spec.models import Node, StagingGate

EXAMPLE = freeze(load_spec(REPO)).document
MODELS = sorted(EXAMPLE["manifests"])
NODES = [n for rack in EXAMPLE["inventory"]["racks"] for n in rack["nodes"]]
RACK = {n["name"]: rack["name"] for rack in EXAMPLE["inventory"]["racks"] for n in rack["nodes"]}
# A few versions per component, the pinned ones among them, so that blocks often hit.
POOL = {comp: sorted({c["version"] for m in EXAMPLE["manifests"].values() for c in m["components"]
                      if c["name"] == comp} | {"0.0.1", "9.9.9"}) for comp in ("bmc", "bios", "nic", "raid")}
STATES = ["new", "active", "failed", "held", "quarantined", "flashing", "installing", "reprovisioning", "verifying"]

versions = {comp: st.sampled_from(v) for comp, v in POOL.items()}
blocks = st.lists(st.builds(Blocked, st.sampled_from(sorted(POOL)), st.sampled_from(sorted({*sum(POOL.values(), [])})),
                            st.just("property test"), st.sampled_from([None, *MODELS])), max_size=6)
firmware = st.one_of(st.just({}), st.fixed_dictionaries({}, optional={c: versions[c] for c in POOL}))


@st.composite
def release_docs(draw):
    """The example release with random pins and, sometimes, more versions on its deny-list."""
    doc = copy.deepcopy(EXAMPLE)
    for m in doc["manifests"].values():
        m["allowed"] = {}  # the spec loader enforces allow-lists; here any pin may come along
        for c in m["components"]:
            c["version"] = draw(versions[c["name"]])
    doc["deny_list"]["blocked"] += [{"component": b.component, "version": b.version, "reason": b.reason,
                                     "model": b.model, "by": "hypothesis", "at": "2026-09-14T08:12:00Z"}
                                    for b in draw(blocks)]
    return doc


def view(doc, rid="R"):
    return ReleaseView.of_document(rid, doc)


def pins_by_model(doc):
    """model -> its pins as frozen (dicts), in flashing order."""
    return {model: sorted(m["components"], key=lambda c: (c["order"], c["name"])) for model, m in doc["manifests"].items()}


def blocked_pins(doc, runtime):
    return pinned_blocked(view(doc), runtime)


def everything_blocked(doc, runtime):
    return runtime + release_blocklist(view(doc))


def runs_blocked(blocked, model, fw):
    return [(c, v) for c, v in fw.items() if find_blocked(blocked, model, c, v)]


# -- single calls -----------------------------------------------------------------------------------------

@settings(max_examples=150, deadline=None)
@given(doc=release_docs(), runtime=blocks, fws=st.lists(firmware, min_size=len(NODES), max_size=len(NODES)),
       installed=st.sampled_from([None, "R", "older"]))
def test_a_plan_never_flashes_a_blocked_version_nor_a_component_at_its_pin(doc, runtime, fws, installed):
    observed = [Observed(n["name"], RACK[n["name"]], n["model"], n["environment"], fw, installed)
                for n, fw in zip(NODES, fws, strict=True)]
    blocked = everything_blocked(doc, runtime)
    pins = pins_by_model(doc)
    for env in ("staging", "production"):
        for node in make_plan(ReleaseView.of_document("R", doc), env, observed, runtime).nodes:
            for f in node.flashes:
                assert not find_blocked(blocked, node.model, f.component, f.to_version), (node, f)
                assert f.from_version != f.to_version
            if any(find_blocked(blocked, node.model, c["name"], c["version"]) for c in pins[node.model]):
                assert (node.action, node.flashes) == ("hold", ()), node


@settings(max_examples=300, deadline=None)
@given(doc=release_docs(), runtime=blocks, fw=firmware, node=st.sampled_from(NODES), state=st.sampled_from(STATES),
       installed=st.sampled_from([None, "R", "older"]))
def test_the_netboot_gate_never_hands_a_blocked_flash_nor_installs_over_a_blocked_version(doc, runtime, fw, node,
                                                                                            state, installed):
    d = decide(Node.model_validate(node), state, view(doc), runtime, fw, installed)
    blocked = everything_blocked(doc, runtime)
    if d.action == "flash":
        assert d.components
        for c in d.components:
            assert not find_blocked(blocked, node["model"], c.name, c.version), (d, c)
    if d.action == "install":
        assert not runs_blocked(blocked, node["model"], fw), d
        assert not [b for m, *_, b in blocked_pins(doc, runtime) if m == node["model"]], d
    if runs_blocked(blocked, node["model"], fw):
        assert d.action in ("flash", "hold"), d


T0 = datetime(2026, 1, 1, tzinfo=UTC)
people = st.sampled_from(["alice", "bob", "carol", "dana"])


@settings(max_examples=200, deadline=None)
@given(nodes=st.lists(st.builds(StagingNode, st.sampled_from(["s1n01", "s1n02", "s1n03", "s1n04", "s1n05"]),
                                st.sampled_from(["R", "older", None]), st.sampled_from(["active", "failed", "held"]),
                                st.one_of(st.none(), st.integers(0, 20).map(lambda s: T0 - timedelta(seconds=s)))),
                      max_size=5, unique_by=lambda n: n.name),
       done=st.integers(0, 5), failed=st.integers(0, 2), approvers=st.lists(people, max_size=5), author=people,
       soak=st.integers(0, 10), min_nodes=st.integers(1, 4), approvals=st.integers(1, 3))
def test_the_staging_gate_passes_only_with_enough_soaked_nodes_and_distinct_approvers_other_than_the_author(
        nodes, done, failed, approvers, author, soak, min_nodes, approvals):
    policy = StagingGate(environment="staging", min_nodes=min_nodes, soak_seconds=soak, success_ratio=1.0,
                         approvals=approvals)
    v = evaluate("R", author, policy, nodes, {"done": done, "failed": failed}, approvers, T0)
    others = set(approvers) - {author}
    soaked = [n for n in nodes if n.release_id == "R" and n.state == "active" and n.healthy_since
              and T0 - n.healthy_since >= timedelta(seconds=soak)]
    assert v.ok == (len(others) >= approvals and len(soaked) >= min_nodes and done > 0 and failed == 0), v
    assert author not in v.facts["approvers"]


# -- sequences over the pure parts ----------------------------------------------------------------------------

class PurePipeline(RuleBasedStateMachine):
    """A site driven only by the pure parts: plans say what to touch, the netboot gate what each boot
    gets. Releases, promotions, blocks, rollbacks and hand flashes in any order."""

    def __init__(self):
        super().__init__()
        self.releases: dict[str, dict] = {}
        self.history: list[str] = []  # what staging pointed at, in order
        self.runtime: list[Blocked] = []
        self.nodes = {n["name"]: {"spec": n, "fw": {}, "installed": None, "state": "new"}
                      for n in NODES if n["environment"] == "staging"}

    def blocked_pins(self, rid):
        return blocked_pins(self.releases[rid], self.runtime)

    @rule(doc=release_docs())
    def build_release(self, doc):
        rid = f"R{len(self.releases)}"
        if not self.blocked_pins_of(doc):  # `release build` refuses a pin blocked at run time
            self.releases[rid] = doc

    def blocked_pins_of(self, doc):
        return [b for m, comps in pins_by_model(doc).items() for c in comps
                if (b := find_blocked(self.runtime, m, c["name"], c["version"]))]

    @precondition(lambda self: self.releases)
    @rule(data=st.data())
    def promote_and_apply(self, data):
        rid = data.draw(st.sampled_from(sorted(self.releases)))
        if self.blocked_pins(rid):
            return  # promote refuses it
        self.history.append(rid)
        self.apply()

    @rule(b=blocks.filter(bool))
    def block(self, b):
        self.runtime += b
        for n in self.nodes.values():
            if runs_blocked(self.runtime, n["spec"]["model"], n["fw"]):
                n["state"] = "held"

    @precondition(lambda self: len(set(self.history)) > 1)
    @rule()
    def rollback(self):
        current = self.history[-1]
        target = [r for r in self.history if r != current][-1]
        if self.blocked_pins(target):
            return  # refused
        self.history.append(target)
        self.apply()

    @rule(node=st.sampled_from([n["name"] for n in NODES if n["environment"] == "staging"]),
          comp=st.sampled_from(sorted(POOL)), data=st.data())
    def hand_flash(self, node, comp, data):
        self.nodes[node]["fw"][comp] = data.draw(versions[comp])

    def apply(self):
        """What the rollout engine does, reduced to its decisions: the plan picks the nodes; each
        boot (in-band flash, then install) gets what the netboot gate decides."""
        rid = self.history[-1]
        doc = self.releases[rid]
        blocked = everything_blocked(doc, self.runtime)
        observed = [Observed(name, RACK[name], n["spec"]["model"], "staging", dict(n["fw"]), n["installed"])
                    for name, n in self.nodes.items()]
        for p in make_plan(view(doc, rid), "staging", observed, self.runtime).nodes:
            if p.action in ("nothing", "hold"):
                continue
            n = self.nodes[p.node]
            model = n["spec"]["model"]
            boots = (["flashing"] if p.flashes else []) + (["installing"] if p.action != "reflash" else [])
            for state in boots:
                n["state"] = state
                d = decide(Node.model_validate(n["spec"]), state, view(doc, rid), self.runtime, dict(n["fw"]),
                           n["installed"])
                if d.action == "flash":
                    for c in d.components:
                        assert not find_blocked(blocked, model, c.name, c.version), (p, d)
                        n["fw"][c.name] = c.version
                elif d.action == "install":
                    assert not runs_blocked(blocked, model, n["fw"]), (p, n)
                    n["installed"] = rid
            # re-provisioning leaves nothing blocked behind: the pins are not blocked, or it was a hold
            assert not runs_blocked(blocked, model, n["fw"]), (p, n["fw"])
            n["state"] = "active"


TestPurePipeline = PurePipeline.TestCase
TestPurePipeline.settings = settings(max_examples=60, stateful_step_count=15, deadline=None)


# -- short sequences against the real pipeline on a small simulated site -------------------------------------

MODEL = {"s1n01": "r650", "s1n03": "dl360g10"}
LAB_NODES = set(MODEL)
# Every version the example ships an image of, but r650 bios 1.12.1: its own manifest blocks it, so the
# spec loader refuses it (tests/spec covers that), and drawing it would only waste steps here.
CHOICES = {("r650", "bios"): ["1.13.2", "1.14.0"], ("r650", "bmc"): ["7.00.60", "7.10.30"],
           ("dl360g10", "bios"): ["2.80.0", "2.90.0"]}
FIRMWARE_CHANGES = ("activated", "inband_flash")


def pin(spec: Path, model: str, component: str, version: str) -> None:
    path = spec / "firmware_manifests" / f"{model}.yaml"
    manifest = yaml.safe_load(path.read_text())
    image = f"artifacts/firmware/{model}/{component}-{version}.bin"
    data = (spec / image).read_bytes()
    c = next(c for c in manifest["components"] if c["name"] == component)
    c.update(version=version, image={"file": image, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)})
    path.write_text(yaml.safe_dump(manifest, sort_keys=False))


class RealPipeline(RuleBasedStateMachine):
    """The real pipeline (store, rollout engine, IPMI, netboot) on a two-node simulated staging rack."""

    def __init__(self):
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="pipeline-properties-"))
        spec = tune_spec(copy_spec(self.tmp / "spec"), nodes=LAB_NODES)
        data = self.tmp / "data"
        self.site = Site(spec, data, Context(Settings(spec_dir=spec, data_dir=data, actor="alice")))
        self.site.start_lab()
        self.ctx = self.site.ctx
        self.releases: dict[str, dict] = {}
        self.blocks: list[tuple[float, Blocked]] = []
        self.checked_until = 0.0
        self.fw_at_start = self.site.firmware()

    def teardown(self):
        self.site.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def blocked_now(self, model, comp, version, at=None):
        return any(b.applies(model, comp, version) for t, b in self.blocks if at is None or t <= at)

    @initialize()
    def the_example_release_is_rolled_out(self):
        rid = self.site.build()
        self.releases[rid] = {(m, c["name"]): c["version"] for m, comps in
                              pins_by_model(self.ctx.store.get_release(rid).document).items()
                              for c in comps if (m, c["name"]) in CHOICES}
        pipeline.promote(self.ctx, rid, "staging")
        self.check_done(pipeline.apply(self.ctx, "staging"), rid)

    @rule(pins=st.fixed_dictionaries({k: st.sampled_from(v) for k, v in CHOICES.items()}))
    def build_release(self, pins):
        for (model, comp), version in pins.items():
            pin(self.site.spec, model, comp, version)
        try:
            rid = self.site.build()
        except PolicyViolation as e:
            event("build refused: pins a blocked version")
            assert any(self.blocked_now(m, c, v) for (m, c), v in pins.items()), e
            return
        assert not any(self.blocked_now(m, c, v) for (m, c), v in pins.items())
        self.releases[rid] = pins

    @rule(node=st.sampled_from(sorted(MODEL)), data=st.data())
    def hand_flash(self, node, data):
        """Someone flashes a node by hand, maybe to a blocked version: the next rollout must undo it."""
        comp, version = data.draw(st.sampled_from([(c, v) for (m, c), vs in CHOICES.items() if m == MODEL[node]
                                                   for v in vs]))
        self.site.lab.site.hand_flash(node, comp, version)

    def check_refusal(self, e: PolicyViolation):
        event(f"refused: {str(e).split(':')[0]}")
        m, c, v = re.search(r"pins (\S+) (\S+) (\S+), blocked", str(e)).groups()
        assert self.blocked_now(m, c, v), e

    def check_done(self, result, rid):
        event(f"rollout done: {len(result.done)} node(s) re-provisioned")
        assert result.status == "done", result.as_dict()
        fw = self.site.firmware()
        for node, n in ((n["name"], n) for n in self.site.lab.status()):
            for (model, comp), version in self.releases[rid].items():
                if n["model"] == model:
                    assert fw[node][comp] == version, (node, comp, fw[node])

    @precondition(lambda self: self.releases)
    @rule(data=st.data())
    def promote_and_apply(self, data, rid=None):
        rid = rid or data.draw(st.sampled_from(sorted(self.releases)))
        try:
            pipeline.promote(self.ctx, rid, "staging")
        except PolicyViolation as e:
            self.check_refusal(e)
            return
        self.check_done(pipeline.apply(self.ctx, "staging"), rid)

    def _block(self, model, comp, version, scoped):
        self.blocks.append((time.time(), Blocked(comp, version, "property test", model if scoped else None)))
        pipeline.block(self.ctx, comp, version, "property test", model=model if scoped else None)

    def pinning_blocked(self) -> list[str]:
        return sorted(r for r, pins in self.releases.items()
                      if any(self.blocked_now(m, c, v) for (m, c), v in pins.items()))

    @precondition(lambda self: self.pinning_blocked())
    @rule(data=st.data())
    def promote_a_release_that_pins_a_version_blocked_since(self, data):
        self.promote_and_apply(data, data.draw(st.sampled_from(self.pinning_blocked())))

    @rule(key=st.sampled_from(sorted(CHOICES)), data=st.data(), scoped=st.booleans())
    def block(self, key, data, scoped):
        self._block(*key, data.draw(st.sampled_from(CHOICES[key])), scoped)

    @rule(key=st.sampled_from(sorted(CHOICES)), scoped=st.booleans())
    def block_what_staging_runs(self, key, scoped):
        """The incident: a version the current release pins turns out bad."""
        self._block(*key, self.releases[self.ctx.store.current_release_id("staging")][key], scoped)

    @precondition(lambda self: len({h["release_id"] for h in self.ctx.store.environment_history("staging")}) > 1)
    @rule()
    def rollback(self):
        try:
            result = pipeline.rollback(self.ctx, "staging")
        except PolicyViolation as e:
            self.check_refusal(e)
            return
        self.check_done(result, self.ctx.store.current_release_id("staging"))

    @invariant()
    def no_blocked_version_is_ever_flashed_or_installed_over(self):
        since, self.checked_until = self.checked_until, time.time()
        for node in LAB_NODES:
            for e in self.site.bmc_log(node):
                if e["event"] in FIRMWARE_CHANGES and e["at"] >= since:
                    assert not self.blocked_now(MODEL[node], e["component"], e["version"], e["at"]), (node, e)
        for e in list(self.site.lab.host.journal):
            if e["event"] == "installed" and e["at"] >= since:
                fw = self.firmware_at(e["node"], e["at"])
                assert not [c for c, v in fw.items() if self.blocked_now(MODEL[e["node"]], c, v, e["at"])], (e, fw)

    def firmware_at(self, node, at):
        fw = dict(self.fw_at_start[node])
        for e in self.site.bmc_log(node):
            if e["event"] in (*FIRMWARE_CHANGES, "hand_flash") and e["at"] <= at:
                fw[e["component"]] = e["version"]
        return fw


TestRealPipeline = RealPipeline.TestCase
# No shrinking: a failing sequence is printed as found (shrinking real rollouts takes minutes).
TestRealPipeline.settings = settings(max_examples=8, stateful_step_count=12, deadline=None,
                                     phases=[Phase.explicit, Phase.reuse, Phase.generate],
                                     suppress_health_check=[HealthCheck.too_slow])
