"""The whole incident of `make demo`, asserted: staging, gate, production, a boot-looping BIOS
stopped at the staging canary, block, rollback, drift, compliance, history and the audit chain.

Everything runs for real on loopback: 20 simulated BMCs speaking IPMI, hosts that PXE-boot
against our TFTP and HTTP boot services, the SQLite store.
"""

from __future__ import annotations

import time

from pipeline_site import LOOP_TIMEOUTS, read_json

from provisioner import pipeline
from provisioner.demo import bump_bios
from provisioner.errors import PolicyViolation

STAGING = ["s1n01", "s1n02", "s1n03", "s1n04"]
PRODUCTION = [f"r{r}n0{i}" for r in (1, 2) for i in range(1, 9)]


def wait_for_gate(ctx, release: str, within: float = 15.0):
    deadline = time.monotonic() + within
    while True:
        verdict = pipeline.gate(ctx, release)
        if verdict.ok or time.monotonic() > deadline:
            return verdict
        time.sleep(0.2)


def test_a_boot_looping_bios_is_stopped_at_the_staging_canary_and_the_fleet_ends_at_its_pins(make_site, tmp_path):
    site = make_site(gate={"soak_seconds": 2}, rollout={"timeouts": LOOP_TIMEOUTS})
    ctx = site.ctx

    # -- R1 proven on staging ------------------------------------------------------------------------
    r1 = site.build(author="alice")
    pipeline.promote(ctx, r1, "staging")
    staged = pipeline.apply(ctx, "staging")
    assert (staged.status, sorted(staged.done), staged.failed) == ("done", STAGING, {})

    not_yet = pipeline.gate(ctx, r1)
    assert not not_yet.ok
    assert any("for the 2s soak" in m for m in not_yet.missing), not_yet.missing
    assert any("0 of 2 approvals" in m for m in not_yet.missing), not_yet.missing
    assert ctx.store.current_release_id("production") is None

    pipeline.approve(ctx, r1, site.account("bob"), "staging clean")
    pipeline.approve(ctx, r1, site.account("carol"))
    passed = wait_for_gate(ctx, r1)
    assert passed.ok, passed.missing
    assert passed.facts["approvers"] == ["bob", "carol"]

    # -- R1 to production ------------------------------------------------------------------------------
    pipeline.promote(ctx, r1, "production")
    rolled = pipeline.apply(ctx, "production")
    assert (rolled.status, sorted(rolled.done), rolled.failed) == ("done", PRODUCTION, {})
    assert all(r["compliant"] for r in pipeline.compliance(ctx, ["production"]))
    assert {fw["bios"] for n, fw in site.firmware().items() if n.startswith("r2")} == {"2.80.0"}

    # -- R2 raises dl360g10 BIOS to 2.90.0, which boot-loops --------------------------------------------
    spec2 = tmp_path / "spec-v2"
    bump_bios(site.spec, spec2)
    r2 = site.build(spec2, author="alice")
    site.lab.set_boot_loop("bios", "2.90.0")
    before_fw, before_boots = site.firmware(), site.boots()
    ctx2 = site.context(spec2)
    pipeline.promote(ctx2, r2, "staging")
    events, at = [], {}

    def progress(e):
        events.append(e)
        at.setdefault((e["event"], e.get("step")), time.monotonic())

    halted = pipeline.apply(ctx2, "staging", progress=progress)

    assert halted.status == "halted"
    assert list(halted.failed) == [canary := next(e["nodes"][0] for e in events if e["event"] == "wave")]
    assert canary in ("s1n03", "s1n04")  # a dl360g10: the canary exercises the change
    assert "presumed boot-looping" in halted.failed[canary]
    assert f"{canary}: boot check: no report within 4s after power-on; presumed boot-looping" in halted.reason
    waited = at[("node_failed", None)] - at[("node_step", "boot_check")]
    assert 4 <= waited < 4 + 2, waited  # the boot check's timeout (power + boot), not more
    assert [e["wave"] for e in events if e["event"] == "wave"] == [0]  # no wave after the canary
    assert ctx.store.node(canary).state == "failed"

    after_fw = site.firmware()
    assert after_fw[canary]["bios"] == "2.90.0"  # the canary really took it, and really loops
    for node in after_fw:
        if node != canary:
            assert after_fw[node] == before_fw[node], node
            assert not [e for e in site.firmware_changes(node) if e["version"] == "2.90.0"], node
    assert {n: site.boots()[n] for n in PRODUCTION} == {n: before_boots[n] for n in PRODUCTION}
    assert ctx.store.current_release_id("production") == r1

    # -- on call: block it everywhere --------------------------------------------------------------------
    blocked = pipeline.block(ctx, "bios", "2.90.0", "boot loop after flash, INC-4411", incident="INC-4411")
    assert blocked["created"] and blocked["marked"] == [canary]

    refused = site.cli("release", "build", spec=spec2)
    assert refused.returncode == 3, refused.stderr
    assert "pins bios 2.90.0, which is blocked" in refused.stderr
    try:
        pipeline.promote(ctx2, r2, "production", force_gate=True)
        raise AssertionError("a release pinning a blocked version was promoted")
    except PolicyViolation as e:
        assert "bios 2.90.0" in str(e)

    # -- roll staging back: the canary is re-provisioned to 2.80.0 ---------------------------------------
    seen = {e["seq"] for e in ctx.store.node_events(canary)}
    rolled_back_at = time.time()
    back = pipeline.rollback(ctx, "staging")
    assert (back.status, back.done, back.failed) == ("done", [canary], {})
    assert ctx.store.current_release_id("staging") == r1
    assert site.firmware()[canary]["bios"] == "2.80.0"
    assert ctx.store.node(canary).state == "active"
    # ...and it was seen to come up on it, not just read back from its BMC
    since = [e["event"] for e in site.bmc_log(canary) if e["at"] >= rolled_back_at and e["event"] != "boot_override"]
    # the canary's BMC speaks Redfish: the BIOS is staged, activates at the reset the driver asks for,
    # then the boot check powers it on once more
    assert since == ["upload_started", "uploaded", "staged", "power", "activated", "power"], since
    assert [e["event"] for e in ctx.store.node_events(canary)
            if e["seq"] not in seen and e["source"] == "callback"] == ["booted"]

    # -- drift: a production NIC flashed by hand, found and re-provisioned ----------------------------
    site.lab.site.hand_flash("r2n05", "nic", "14.30.0")
    items, unreachable = pipeline.drift(ctx)
    assert unreachable == {}
    assert [(i.node, i.component, i.observed, i.pinned) for i in items] == [("r2n05", "nic", "14.30.0", "14.32.1")]
    fixed = pipeline.apply(ctx, "production", kind="drift", reason="drift correction", only={"r2n05"})
    assert (fixed.status, fixed.done) == ("done", ["r2n05"])
    assert site.firmware()["r2n05"]["nic"] == "14.32.1"
    assert pipeline.drift(ctx) == ([], {})

    # -- every node at its pins; the story is in the record ------------------------------------------
    rows = pipeline.compliance(ctx)
    assert len(rows) == 20 and [r["node"] for r in rows if not r["compliant"]] == []
    assert {r["release"] for r in rows} == {r1}

    history = site.cli("history", "--json", "--limit", "500")
    assert history.returncode == 0, history.stderr
    h = read_json(history.stdout)
    # the halted rollout was superseded by the rollback; the audit log keeps why it halted
    assert [(r["environment"], r["kind"], r["status"]) for r in h["rollouts"]] == [
        ("staging", "apply", "done"), ("production", "apply", "done"), ("staging", "apply", "superseded"),
        ("staging", "rollback", "done"), ("production", "drift", "done")]
    assert [e["details"]["reason"] for e in h["audit"] if e["action"] == "rollout.halted"] == [halted.reason]
    actions = [e["action"] for e in h["audit"]]
    for action in ("release.build", "env.promote", "release.approve", "rollout.apply", "rollout.halted",
                   "firmware.block", "env.rollback", "rollout.rollback", "rollout.drift"):
        assert action in actions, action
    assert [e["actor"] for e in h["audit"] if e["action"] == "release.approve"] == ["bob", "carol"]

    verify = site.cli("audit", "verify")
    assert verify.returncode == 0, verify.stderr
    assert "chain verified" in verify.stdout
