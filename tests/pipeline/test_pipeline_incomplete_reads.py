"""Incomplete reads are not green: a BMC that cannot be read (down, or refusing the password) makes
`plan`, `drift` and `status` name the node and the error, in the human output too, and exit 10
(incomplete) instead of 0; `apply` leaves such a node alone and reports it."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from pipeline_site import read_json

from provisioner import pipeline

INCOMPLETE = 10
NODES = {"s1n01", "r1n01", "r1n02"}
PRODUCTION = ["r1n01", "r1n02"]


@pytest.fixture
def promoted(make_site):
    site = make_site(nodes=NODES)
    r1 = site.build()
    pipeline.promote(site.ctx, r1, "staging")
    pipeline.promote(site.ctx, r1, "production", force_gate=True)
    return site


def test_every_production_bmc_unreachable_makes_plan_drift_and_status_incomplete_naming_each_node(promoted):
    site = promoted
    for node in PRODUCTION:
        site.lab.site.set_fault(node, unreachable=True)

    # three reads that each wait out the BMC timeout: run side by side to keep the test short
    with ThreadPoolExecutor(3) as pool:
        plan, drift, status = pool.map(lambda args: site.cli(*args),
                                       [("plan", "production"), ("drift", "production"), ("status", "production")])
    assert plan.returncode == INCOMPLETE, plan.stdout + plan.stderr
    assert "0 nothing" not in plan.stdout and "2 unknown" in plan.stdout
    assert "INCOMPLETE: 2 BMC(s) could not be read" in plan.stdout
    for node in PRODUCTION:
        assert f"  {node}: BmcUnreachable: " in plan.stdout

    assert drift.returncode == INCOMPLETE, drift.stdout + drift.stderr
    assert "INCOMPLETE: 2 BMC(s) could not be read; whether they drifted is unknown" in drift.stdout
    assert all(f"  {node}: BmcUnreachable: " in drift.stdout for node in PRODUCTION)

    assert status.returncode == INCOMPLETE, status.stdout + status.stderr
    assert status.stdout.count("unknown") >= 2 and " yes " not in status.stdout
    assert all(f"  {node}: BmcUnreachable: " in status.stdout for node in PRODUCTION)
    # staging's BMC answers: its status is complete
    assert site.cli("status", "staging").returncode == 0


def test_a_wrong_bmc_password_is_incomplete_and_apply_leaves_that_node_alone(promoted):
    site = promoted
    site.lab.site.set_fault("r1n01", wrong_password=True)
    before = site.lab.site.state("r1n01")

    plan = site.cli("plan", "production", "--json")
    assert plan.returncode == INCOMPLETE, plan.stdout + plan.stderr
    p = read_json(plan.stdout)
    assert list(p["unreachable"]) == ["r1n01"] and p["unreachable"]["r1n01"].startswith("BmcAuthError: ")
    assert {n["node"]: n["action"] for n in p["nodes"]} == {"r1n01": "unknown", "r1n02": "reprovision"}

    applied = site.cli("apply", "production", "--yes")
    assert applied.returncode == INCOMPLETE, applied.stdout + applied.stderr
    assert "1 done, 0 failed" in applied.stdout
    assert "r1n01: BmcAuthError: " in applied.stdout and "left alone: nothing was done to them" in applied.stdout
    after = site.lab.site.state("r1n01")
    assert (after["boots"], after["firmware"]) == (before["boots"], before["firmware"])
    assert site.firmware()["r1n02"]["bmc"] == "7.10.30"
