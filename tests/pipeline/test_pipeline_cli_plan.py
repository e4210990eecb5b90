"""`provisioner plan` exit codes, as scripts rely on them (terraform plan -detailed-exitcode):
0 nothing to do, 2 changes, 1 any error; and its --json output."""

from __future__ import annotations

from pipeline_site import read_json

from provisioner import pipeline

PRODUCTION = [f"r{r}n0{i}" for r in (1, 2) for i in range(1, 9)]


def test_plan_exits_2_with_changes_0_when_nothing_is_left_to_do_and_1_on_errors(lab_site):
    site = lab_site

    no_release = site.cli("plan", "production")
    assert no_release.returncode == 1, no_release.stdout + no_release.stderr
    assert "environment production points at no release yet" in no_release.stderr

    r1 = site.build()
    pipeline.promote(site.ctx, r1, "production", force_gate=True)
    changes = site.cli("plan", "production", "--json")
    assert changes.returncode == 2, changes.stderr
    plan = read_json(changes.stdout)
    assert (plan["release"], plan["environment"], plan["counts"], plan["unreachable"]) == (
        r1, "production", {"reprovision": 16}, {})
    reasons = {n["node"]: n["reason"] for n in plan["nodes"]}
    assert sorted(reasons) == PRODUCTION
    assert reasons["r1n01"] == "bmc 7.00.60 → 7.10.30; reimage to this release"
    assert reasons["r2n01"] == "nic 14.30.0 → 14.32.1; reimage to this release"
    human = site.cli("plan", "production")
    assert human.returncode == 2 and "16 reprovision" in human.stdout

    assert pipeline.apply(site.ctx, "production").status == "done"
    nothing = site.cli("plan", "production", "--json")
    assert nothing.returncode == 0, nothing.stderr
    assert read_json(nothing.stdout)["counts"] == {"nothing": 16}

    # a broken spec is an error (1), never "changes" (2): a script would go on to apply
    (site.spec / "inventory.yaml").write_text((site.spec / "inventory.yaml").read_text() + "racks: [\n")
    broken = site.cli("plan", "production")
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert "inventory.yaml" in broken.stderr and "YAML syntax error" in broken.stderr
