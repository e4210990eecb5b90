"""The staging gate through the CLI: people approve, not approvals; the author cannot approve;
production is refused, with what is missing, until the gate passes."""

from __future__ import annotations

import time

from pipeline_site import read_json

from provisioner import pipeline
from provisioner.demo import bump_bios


def test_two_approvals_by_one_person_count_once_and_production_waits_for_the_gate(make_site):
    site = make_site(gate={"soak_seconds": 1})
    built = site.cli("release", "build", "--json", who="alice")
    assert built.returncode == 0, built.stderr
    rid = read_json(built.stdout)["id"]
    r1 = rid[:12]

    early = site.cli("promote", r1, "--to", "production")
    assert early.returncode == 3, early.stdout + early.stderr
    assert f"release {r1} has not passed the staging gate: active on 0 of the 4 staging nodes required" in early.stderr
    assert "success ratio 0.00 on staging (0 done, 0 failed), 1.00 required" in early.stderr
    assert "0 of 2 approvals from people other than the author (alice)" in early.stderr

    assert site.cli("promote", r1, "--to", "staging").returncode == 0
    assert pipeline.apply(site.ctx, "staging").status == "done"

    own = site.cli("approve", r1, "--as", "alice", who="alice")
    assert own.returncode == 3
    assert own.stderr.strip() == f"error: alice built release {r1} and cannot approve it; ask someone else"

    first = site.cli("approve", r1, "--as", "bob", "--comment", "staging clean", "--json", who="bob")
    second = site.cli("approve", r1, "--as", "bob", who="bob")
    assert first.returncode == 0 and read_json(first.stdout)["recorded"] is True
    assert second.returncode == 0 and "already approved (counts once)" in second.stdout
    assert [a["approver"] for a in site.ctx.store.approvals(rid)] == ["bob"]

    gate = site.cli("gate", r1, "--json")
    assert gate.returncode == 1
    assert "1 of 2 approvals from people other than the author (alice)" in read_json(gate.stdout)["missing"]
    refused = site.cli("promote", r1, "--to", "production")
    assert refused.returncode == 3
    assert "1 of 2 approvals from people other than the author (alice)" in refused.stderr
    assert "active on" not in refused.stderr and "success ratio" not in refused.stderr  # those are met
    assert site.ctx.store.current_release_id("production") is None

    assert site.cli("approve", r1, "--as", "carol", who="carol").returncode == 0
    deadline = time.monotonic() + 10
    while not pipeline.gate(site.ctx, rid).ok and time.monotonic() < deadline:  # the 1 s soak
        time.sleep(0.1)
    passes = site.cli("gate", r1)
    assert passes.returncode == 0, passes.stdout
    assert "PASSES the staging gate" in passes.stdout and "approvals: bob, carol (author alice)" in passes.stdout
    promoted = site.cli("promote", r1, "--to", "production")
    assert promoted.returncode == 0, promoted.stderr
    assert site.ctx.store.current_release_id("production") == rid


def test_a_release_changing_one_model_counts_the_staging_nodes_it_leaves_alone(make_site, tmp_path):
    """R2 raises only the dl360g10 BIOS: the r650s are already at R2's pins and image, so the rollout
    leaves them alone, and they are at R2 all the same (for the gate and for compliance)."""
    site = make_site(gate={"soak_seconds": 0})
    r1 = site.build()
    pipeline.promote(site.ctx, r1, "staging")
    assert pipeline.apply(site.ctx, "staging").status == "done"
    spec2 = tmp_path / "spec-v2"
    bump_bios(site.spec, spec2)
    r2 = site.build(spec2)
    ctx2 = site.context(spec2)
    pipeline.promote(ctx2, r2, "staging")

    result = pipeline.apply(ctx2, "staging")

    assert (result.status, sorted(result.done)) == ("done", ["s1n03", "s1n04"])  # the r650s: nothing to do
    assert {n: fw["bios"] for n, fw in site.firmware().items() if n.startswith("s1")} == {
        "s1n01": "1.13.2", "s1n02": "1.13.2", "s1n03": "2.90.0", "s1n04": "2.90.0"}
    assert [(r["node"], r["compliant"]) for r in pipeline.compliance(ctx2, ["staging"])] == [
        ("s1n01", True), ("s1n02", True), ("s1n03", True), ("s1n04", True)]
    pipeline.approve(ctx2, r2, "bob")
    pipeline.approve(ctx2, r2, "carol")
    verdict = pipeline.gate(ctx2, r2)
    assert verdict.ok, verdict.missing
    assert verdict.facts["active_nodes"] == ["s1n01", "s1n02", "s1n03", "s1n04"]
