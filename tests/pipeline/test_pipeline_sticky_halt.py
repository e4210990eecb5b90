"""A halted rollout stops its environment: `apply` again flashes nothing and says why, until an
operator resumes or aborts it (audited) or a rollback supersedes it. The node that failed shows as
`recover` in `plan`, never `nothing`."""

from __future__ import annotations

from pipeline_site import LOOP_TIMEOUTS, read_json

from provisioner import pipeline
from provisioner.rollout.record import RolloutRecord

STAGING = {"s1n01", "s1n02"}  # two r650s


def halted_staging(make_site):
    """The issue's reproduction: the r650 BIOS staging's release pins boot-loops; the canary s1n01
    is flashed, loops, and the rollout halts."""
    site = make_site(rollout={"timeouts": LOOP_TIMEOUTS}, nodes=STAGING)
    r1 = site.build()
    pipeline.promote(site.ctx, r1, "staging")
    site.lab.set_boot_loop("bios", "1.13.2")
    first = site.cli("apply", "staging", "--json")
    assert first.returncode == 8, first.stderr
    halted = read_json(first.stdout)
    assert list(halted["failed"]) == ["s1n01"] and "presumed boot-looping" in halted["failed"]["s1n01"]
    return site, halted


def test_apply_after_a_halt_flashes_nothing_says_why_and_plan_shows_the_failed_node_as_recover(make_site):
    site, halted = halted_staging(make_site)
    boots, fw = site.boots(), site.firmware()

    again = site.cli("apply", "staging")

    assert again.returncode == 8, again.stdout + again.stderr
    assert (f"error: staging is halted by rollout {halted['rollout']} (1 node(s) failed (threshold 1): s1n01: "
            in again.stderr), again.stderr
    assert f"`provisioner rollout resume {halted['rollout']} --reason ...`" in again.stderr
    assert site.boots() == boots and site.firmware() == fw  # s1n02 not flashed, nothing power-cycled
    assert site.boots()["s1n02"] == 0 and site.firmware_changes("s1n02") == []
    assert [(r.id, r.status) for r in RolloutRecord(site.ctx.store).rollouts("staging")] == [
        (halted["rollout"], "halted")]

    plan = site.cli("plan", "staging", "--json")
    nodes = {n["node"]: n for n in read_json(plan.stdout)["nodes"]}
    assert nodes["s1n01"]["action"] == "recover", nodes["s1n01"]
    assert "failed: install: no report within" in nodes["s1n01"]["reason"]
    human = site.cli("plan", "staging")
    assert "recover" in human.stdout and "presumed boot-looping" in human.stdout

    status = site.cli("status", "staging", "--json")
    assert {r["node"]: r["compliant"] for r in read_json(status.stdout)}["s1n01"] is False


def test_rollout_abort_frees_the_environment_and_resume_retries_the_failed_node_both_audited(make_site):
    site, halted = halted_staging(make_site)
    rid = halted["rollout"]

    no_reason = site.cli("rollout", "resume", str(rid))
    assert no_reason.returncode == 2 and "--reason" in no_reason.stderr

    site.lab.set_boot_loop("bios", "1.13.2", on=False)  # the vendor's fix: the BIOS posts again
    resumed = site.cli("rollout", "resume", str(rid), "--reason", "lab fault cleared, INC-1", "--json")
    assert resumed.returncode == 0, resumed.stderr
    out = read_json(resumed.stdout)
    assert (out["rollout"], out["status"], sorted(out["done"])) == (rid, "done", sorted(STAGING))
    assert site.ctx.store.node("s1n01").state == "active"

    entries = site.ctx.store.audit_entries()
    [entry] = [e for e in entries if e["action"] == "rollout.resume"]
    assert (entry["actor"].endswith("(local store)"), entry["client"].endswith("as alice (unverified)"),
            entry["details"]["rollout"], entry["details"]["reason"]) == (True, True, rid, "lab fault cleared, INC-1")

    done_again = site.cli("rollout", "abort", str(rid), "--reason", "too late")
    assert done_again.returncode == 3 and f"rollout {rid} is done" in done_again.stderr


def test_rollout_abort_is_audited_and_lets_the_next_apply_start_a_new_rollout(make_site):
    site, halted = halted_staging(make_site)
    rid = halted["rollout"]
    aborted = site.cli("rollout", "abort", str(rid), "--reason", "give up, INC-2", "--json")
    assert aborted.returncode == 0, aborted.stderr
    assert read_json(aborted.stdout)["status"] == "aborted"
    [entry] = [e for e in site.ctx.store.audit_entries() if e["action"] == "rollout.abort"]
    assert entry["details"] == {"rollout": rid, "reason": "give up, INC-2"}
    shown = read_json(site.cli("rollout", "show", str(rid), "--json").stdout)
    assert {n["node"]: n["status"] for n in shown["nodes"]} == {"s1n01": "failed", "s1n02": "skipped"}

    site.lab.set_boot_loop("bios", "1.13.2", on=False)
    again = site.cli("apply", "staging", "--json")
    assert again.returncode == 0, again.stderr
    out = read_json(again.stdout)
    assert out["rollout"] != rid and sorted(out["done"]) == sorted(STAGING)
