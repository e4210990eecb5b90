"""Environments are declared in policy.yaml: a typo never creates one. Every command that names an
environment refuses any other name, listing the known ones and the likely intended one."""

from __future__ import annotations

import pytest
import yaml

from provisioner import pipeline
from provisioner.errors import UnknownEnvironment


@pytest.fixture
def released(make_site):
    site = make_site(lab=False, nodes={"s1n01", "r1n01"})
    return site, site.build()


@pytest.mark.parametrize("typo, hint", [("prod", "did you mean 'production'?"),
                                        ("Production", "did you mean 'production'?"),
                                        ("stagin", "did you mean 'staging'?")])
def test_promote_to_an_undeclared_environment_is_refused_with_the_known_ones_and_a_guess(released, typo, hint):
    site, r1 = released
    out = site.cli("promote", r1[:12], "--to", typo)
    assert out.returncode == 1, out.stdout + out.stderr
    assert out.stderr.strip() == (f"error: unknown environment {typo!r} ({hint}); known: staging, production, "
                                  "as declared under environments: in policy.yaml")
    listed = site.cli("release", "list", "--json")
    assert '"environments": []' in listed.stdout and typo not in listed.stdout  # nothing was pointed


@pytest.mark.parametrize("args", [("status", "qa"), ("plan", "qa"), ("apply", "qa"), ("rollback", "qa"),
                                  ("drift", "qa")])
def test_every_command_naming_an_environment_refuses_an_undeclared_one(released, args):
    site, _ = released
    out = site.cli(*args)
    assert out.returncode == 1, out.stdout + out.stderr
    assert out.stderr.strip() == ("error: unknown environment 'qa'; known: staging, production, "
                                  "as declared under environments: in policy.yaml")
    assert out.stdout == ""


def test_environments_declared_in_policy_yaml_are_the_only_ones_and_protected_is_read(released):
    site, r1 = released
    policy = yaml.safe_load((site.spec / "policy.yaml").read_text())
    policy["environments"] = {"staging": {}, "production": {"protected": True}, "qa": None}
    (site.spec / "policy.yaml").write_text(yaml.safe_dump(policy, sort_keys=False))
    ctx = site.context()
    assert pipeline.promote(ctx, r1, "qa", force_gate=True) is None
    assert (ctx.spec.policy.protected("production"), ctx.spec.policy.protected("qa")) == (True, False)
    with pytest.raises(UnknownEnvironment, match="known: staging, production, qa"):
        pipeline.promote(ctx, r1, "dev", force_gate=True)


def test_a_staging_gate_on_an_undeclared_environment_and_drift_action_are_spec_errors(released):
    site, _ = released
    policy = yaml.safe_load((site.spec / "policy.yaml").read_text())
    policy["staging_gate"]["environment"] = "stage"
    (site.spec / "policy.yaml").write_text(yaml.safe_dump(policy, sort_keys=False))
    out = site.cli("validate")
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stderr.splitlines()[0].startswith("error: policy.yaml:") and out.stderr.splitlines()[0].endswith(
        ": staging_gate.environment: environment 'stage' is not declared; expected one of "
        "['staging', 'production'], or declare it under environments:")

    policy["staging_gate"]["environment"] = "staging"
    policy["rollout"]["drift_action"] = "reprovision"
    (site.spec / "policy.yaml").write_text(yaml.safe_dump(policy, sort_keys=False))
    out = site.cli("validate")
    assert out.returncode == 2, out.stdout + out.stderr
    assert "rollout.drift_action: invalid value (got 'reprovision'); expected no such key: `provisioner drift` " \
           "reports, `provisioner drift --fix` re-provisions" in out.stderr
