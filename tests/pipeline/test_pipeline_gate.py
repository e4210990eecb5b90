"""The staging gate through the CLI: approvals are made by authenticated accounts, counted from the
audit chain, refused (and audited) for the author under any spelling of the name, for a release that
failed on staging or pins a blocked version; the rules in force are not the release's own alone."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time

import pytest
import yaml
from pipeline_site import LOOP_TIMEOUTS, read_json

from provisioner import pipeline
from provisioner.auth.authenticate import with_password
from provisioner.demo import bump_bios
from provisioner.errors import PolicyViolation

PASSWORD = "correct horse battery"


def accounts(site, **roles: str) -> dict[str, str]:
    """Create accounts (name -> role) with PASSWORD; return each one's personal API token."""
    tokens = {}
    for name, role in roles.items():
        site.ctx.store.accounts.add(name, role, "test set-up", password=PASSWORD)
        tokens[name], _ = site.ctx.store.accounts.create_token(name, "test", "test set-up")
    return tokens


def approve(site, rid: str, *args: str, token: str | None = None, who: str | None = None,
            password: str | None = None, before: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """`provisioner approve RID [--account WHO] ARGS...`, authenticated by a token or WHO's password on stdin."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISIONER_")}
    env.update({"PROVISIONER_SPEC": str(site.spec), "PROVISIONER_DATA": str(site.data)})
    if token:
        env["PROVISIONER_TOKEN"] = token
    cmd = [sys.executable, "-m", "provisioner", *before, "approve", rid,
           *(["--account", who] if who is not None else []), *args]
    if password is not None:
        cmd.append("--password-stdin")
    return subprocess.run(cmd, env=env, input=(password or "") + "\n", capture_output=True, text=True, timeout=60)


def audit_actions(site, action: str) -> list[dict]:
    return [e for e in site.ctx.store.audit_entries() if e["action"] == action]


def test_two_accounts_approve_once_each_and_production_waits_for_the_gate(make_site):
    site = make_site(gate={"soak_seconds": 1})
    tok = accounts(site, bob="approver", carol="approver")
    built = site.cli("release", "build", "--json", who="alice")
    assert built.returncode == 0, built.stderr
    rid = read_json(built.stdout)["id"]
    r1 = rid[:12]

    early = site.cli("promote", r1, "--to", "production")
    assert early.returncode == 3, early.stdout + early.stderr
    assert f"release {r1} has not passed the staging gate: active on 0 of the 4 staging nodes required" in early.stderr
    assert "0 of 2 approvals from people other than the author (alice)" in early.stderr

    assert site.cli("promote", r1, "--to", "staging").returncode == 0
    assert pipeline.apply(site.ctx, "staging").status == "done"

    first = approve(site, r1, "--comment", "staging clean", "--json", who="bob", password=PASSWORD)
    second = approve(site, r1, token=tok["bob"])
    assert first.returncode == 0 and read_json(first.stdout)["recorded"] is True, first.stderr
    assert second.returncode == 0 and "already approved (counts once)" in second.stdout
    assert [a["approver"] for a in site.ctx.store.approvals(rid)] == ["bob"]

    refused = site.cli("promote", r1, "--to", "production")
    assert refused.returncode == 3
    assert "1 of 2 approvals from people other than the author (alice)" in refused.stderr
    assert site.ctx.store.current_release_id("production") is None

    assert approve(site, r1, token=tok["carol"]).returncode == 0
    deadline = time.monotonic() + 10
    while not pipeline.gate(site.ctx, rid).ok and time.monotonic() < deadline:  # the 1 s soak
        time.sleep(0.1)
    passes = site.cli("gate", r1)
    assert passes.returncode == 0, passes.stdout
    assert "PASSES the staging gate" in passes.stdout and "approvals: bob, carol (author alice)" in passes.stdout
    promoted = site.cli("promote", r1, "--to", "production")
    assert promoted.returncode == 0, promoted.stderr
    assert site.ctx.store.current_release_id("production") == rid
    approvals = audit_actions(site, "release.approve")
    assert [(e["actor"], e["auth_method"]) for e in approvals] == [("bob", "password"), ("carol", "token")]


@pytest.fixture
def unstaged(make_site):
    """A release built by u1 (local store, name claimed), never staged; accounts u1, u2 and a viewer."""
    site = make_site(lab=False)
    tok = accounts(site, u1="approver", u2="approver", vic="viewer")
    return site, site.build(author="u1"), tok  # what `release build` stores when run by the OS login u1


@pytest.mark.parametrize("spelling", ["U1", "u1 ", "ｕ１"], ids=["upper", "trailing-space", "fullwidth"])
def test_the_author_cannot_approve_under_another_spelling_of_the_name(unstaged, spelling):
    site, rid, _ = unstaged
    r = approve(site, rid[:12], who=spelling, password=PASSWORD)
    assert r.returncode == 3, r.stdout + r.stderr
    assert r.stderr.strip() == f"error: u1 built release {rid[:12]} and cannot approve it; ask someone else"
    assert site.ctx.store.approvals(rid) == []
    refusals = audit_actions(site, "authz.refused")  # the refused self-approval is in the audit log
    assert [(e["actor"], e["subject"], e["details"]["action"]) for e in refusals] == [("u1", rid, "approve")]


def test_an_empty_name_approves_nothing(unstaged):
    site, rid, _ = unstaged
    r = approve(site, rid[:12], who="", password=PASSWORD)
    assert r.returncode == 11 and r.stderr.strip() == "error: a username cannot be empty", r.stderr
    assert site.ctx.store.approvals(rid) == []


def test_approve_on_the_server_host_checks_the_named_accounts_password(unstaged):
    """`provisioner --as u2 approve ID` once failed with "Missing option '--as'"; `--as` is gone, and
    `approve --account u2` counts only with u2's password."""
    site, rid, _ = unstaged
    r = approve(site, rid[:12], who="u2", password=PASSWORD)
    assert r.returncode == 0, r.stderr
    assert "approval recorded: u2" in r.stdout
    wrong = approve(site, rid[:12], who="u2", password="not the password")
    assert wrong.returncode == 11 and wrong.stderr.strip() == "error: wrong username or password for 'u2'"
    (failed,) = audit_actions(site, "release.approve.refused")  # a failed sign-in to approve is audited too
    assert failed["details"]["reason"] == "wrong username or password for 'u2'" and failed["auth_method"] == "local-store"
    old_style = approve(site, rid[:12], before=("--as", "u2"))
    assert old_style.returncode == 2 and old_style.stderr.startswith("error: No such option '--as'")
    nobody = approve(site, rid[:12], password=PASSWORD)  # no account named: the OS login, no such account
    assert nobody.returncode == 11 and "wrong username or password" in nobody.stderr, nobody.stderr
    assert [a["approver"] for a in site.ctx.store.approvals(rid)] == ["u2"]


def test_an_approval_needs_an_account_with_the_approver_role(unstaged):
    site, rid, tok = unstaged
    viewer = approve(site, rid[:12], token=tok["vic"])
    assert viewer.returncode == 3
    assert viewer.stderr.strip() == "error: vic (viewer) may not approve; it needs the approver role"
    with pytest.raises(PolicyViolation, match="approve needs an authenticated account, not direct store access"):
        pipeline.approve(site.ctx, rid, site.ctx.actor)
    assert site.ctx.store.approvals(rid) == []
    assert len(audit_actions(site, "authz.refused")) == 2


def test_a_row_written_straight_into_the_approvals_table_is_not_counted(unstaged):
    site, rid, tok = unstaged
    assert approve(site, rid[:12], token=tok["u2"]).returncode == 0
    con = sqlite3.connect(site.data / "provisioner.db")
    con.execute("INSERT INTO approvals (release_id, approver, at, comment, account_id) "
                "VALUES (?, 'mallory', '2026-01-01 00:00:00', '', 99)", (rid,))
    con.commit()
    con.close()
    gate = site.cli("gate", rid[:12], "--json")
    assert gate.returncode == 1
    assert read_json(gate.stdout)["facts"]["approvers"] == ["u2"]
    assert "1 of 2 approvals from people other than the author (u1)" in read_json(gate.stdout)["missing"]


def test_an_approval_can_be_withdrawn_and_then_no_longer_counts(unstaged):
    site, rid, tok = unstaged
    assert approve(site, rid[:12], token=tok["u2"]).returncode == 0
    back = approve(site, rid[:12], "--withdraw", "--comment", "saw errors", token=tok["u2"])
    assert back.returncode == 0, back.stderr
    assert "approval withdrawn: u2" in back.stdout and "approvers now: -" in back.stdout
    assert site.ctx.store.approvals(rid) == []
    again = approve(site, rid[:12], "--withdraw", token=tok["u2"])
    assert again.returncode == 0 and "no approval of yours to withdraw" in again.stdout
    assert [e["actor"] for e in audit_actions(site, "release.approve.withdraw")] == ["u2"]


def test_a_release_pinning_a_blocked_version_cannot_be_approved(unstaged):
    site, rid, tok = unstaged
    pins = site.ctx.store.get_release(rid).document["manifests"]["r650"]["components"]
    bios = next(c["version"] for c in pins if c["name"] == "bios")
    assert site.cli("block", "bios", bios, "--reason", "hangs at POST").returncode == 0
    r = approve(site, rid[:12], token=tok["u2"])
    assert r.returncode == 3
    assert f"pins r650 bios {bios}, blocked (hangs at POST); it cannot be approved" in r.stderr
    assert [e["details"]["reason"] for e in audit_actions(site, "release.approve.refused")] == [r.stderr.strip()[7:]]


def test_a_release_that_failed_on_staging_cannot_be_approved(make_site, tmp_path):
    site = make_site(rollout={"timeouts": LOOP_TIMEOUTS}, nodes={"s1n03"})
    tok = accounts(site, bob="approver")
    site.lab.set_boot_loop("bios", "2.90.0")
    spec2 = tmp_path / "spec-v2"
    bump_bios(site.spec, spec2)
    r2 = site.build(spec2)
    ctx2 = site.context(spec2)
    pipeline.promote(ctx2, r2, "staging")
    assert pipeline.apply(ctx2, "staging").status == "halted"
    r = approve(site, r2[:12], token=tok["bob"])
    assert r.returncode == 3
    assert f"release {r2[:12]} failed on staging (1 node(s) failed, rollout 1 halted)" in r.stderr
    assert len(audit_actions(site, "release.approve.refused")) == 1


def test_a_release_naming_production_as_its_staging_environment_is_refused_production(make_site):
    """The issue's spec: policy.yaml says staging_gate.environment: production, min nodes and approvals
    1, soak 0. Built and promoted to production with no approval and no staging run: refused now."""
    site = make_site(lab=False, gate={"environment": "production", "min_nodes": 1, "approvals": 1,
                                      "soak_seconds": 0})
    rid = site.build()
    r = site.cli("promote", rid[:12], "--to", "production")
    assert r.returncode == 3, r.stdout + r.stderr
    assert "has not passed the staging gate: active on 0 of the 1 staging nodes required" in r.stderr
    assert site.ctx.store.current_release_id("production") is None
    gate = read_json(site.cli("gate", rid[:12], "--json").stdout)
    assert gate["facts"]["policy"]["environment"] == "staging"
    assert gate["facts"]["release_policy"]["environment"] == "production"


def test_the_site_floor_and_the_release_in_production_raise_the_bar(make_site):
    site = make_site(lab=False, gate={"approvals": 1, "min_nodes": 1})
    rid = site.build()
    (site.data / "site.yaml").write_text(yaml.safe_dump({"gate_floor": {"approvals": 3, "soak_seconds": 60}}))
    v = pipeline.gate(site.context(), rid)
    assert (v.facts["policy"]["approvals"], v.facts["policy"]["soak_seconds"], v.facts["policy"]["min_nodes"]) == (
        3, 60, 1)
    assert v.facts["rules_source"]["approvals"] == "site floor"
    assert "0 of 3 approvals from people other than the author (alice)" in v.missing


def test_rollback_to_a_release_never_active_there_that_has_not_passed_the_gate_is_refused(make_site):
    """The issue: `promote` refused a never-staged, unapproved release (exit 3); `rollback production
    --to` the same release exited 0 and re-provisioned 16 nodes."""
    site = make_site(lab=False)
    r1 = site.build()
    pipeline.promote(site.ctx, r1, "production", force_gate=True)
    spec2 = site.data.parent / "spec-v2"
    bump_bios(site.spec, spec2)
    r2 = site.build(spec2)
    assert site.cli("promote", r2[:12], "--to", "production").returncode == 3
    r = site.cli("rollback", "production", "--to", r2[:12], "--yes")
    assert r.returncode == 3, r.stdout + r.stderr
    assert r.stderr.startswith(f"error: cannot roll production back to {r2[:12]}: it was never active in "
                               f"production and has not passed the staging gate (active on 0 of")
    assert site.ctx.store.current_release_id("production") == r1
    assert [e["details"]["action"] for e in audit_actions(site, "authz.refused")][-1] == "roll back to another release"


def test_a_release_changing_one_model_counts_the_staging_nodes_it_leaves_alone(make_site, tmp_path):
    """R2 raises only the dl360g10 BIOS: the r650s are already at R2's pins and image, so the rollout
    leaves them alone, and they are at R2 all the same (for the gate and for compliance)."""
    site = make_site(gate={"soak_seconds": 0})
    accounts(site, bob="approver", carol="approver")
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
    for name in ("bob", "carol"):
        pipeline.approve(ctx2, r2, with_password(ctx2.store.accounts, name, PASSWORD))
    verdict = pipeline.gate(ctx2, r2)
    assert verdict.ok, verdict.missing
    assert verdict.facts["active_nodes"] == ["s1n01", "s1n02", "s1n03", "s1n04"]


def test_with_a_token_the_build_is_authored_by_its_account_and_held_to_its_role(unstaged):
    site, first, tok = unstaged
    viewer = site.cli("release", "build", env={"PROVISIONER_TOKEN": tok["vic"]})
    assert viewer.returncode == 3
    assert viewer.stderr.strip() == "error: vic (viewer) may not build; it needs the operator role"
    promote = site.cli("promote", first[:12], "--to", "production", env={"PROVISIONER_TOKEN": tok["vic"]})
    assert promote.stderr.strip() == "error: vic (viewer) may not promote to production; it needs the operator role"
    assert site.ctx.store.current_release_id("production") is None
    policy = yaml.safe_load((site.spec / "policy.yaml").read_text())
    policy["staging_gate"]["soak_seconds"] = 7  # a new release
    (site.spec / "policy.yaml").write_text(yaml.safe_dump(policy))
    built = site.cli("release", "build", "--json", who="someone-else", env={"PROVISIONER_TOKEN": tok["u2"]})
    assert built.returncode == 0, built.stderr
    rid = read_json(built.stdout)["id"]
    assert read_json(built.stdout)["author"] == "u2"
    (entry,) = [e for e in audit_actions(site, "release.build") if e["subject"] == rid]
    assert (entry["actor"], entry["account_id"], entry["auth_method"]) == ("u2", 2, "token")
    own = approve(site, rid[:12], token=tok["u2"])
    assert own.returncode == 3 and "u2 built release" in own.stderr


def test_a_wrong_site_floor_is_one_line_naming_the_file_and_field(make_site):
    site = make_site(lab=False)
    rid = site.build()
    (site.data / "site.yaml").write_text("gate_floor:\n  approvals: 0\n")
    r = site.cli("gate", rid[:12])
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"error: {site.data / 'site.yaml'}: gate_floor.approvals: Input should be greater than or equal to 1" in r.stderr
