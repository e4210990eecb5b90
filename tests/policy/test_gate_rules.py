"""The rules in force at the staging gate: the strictest of the release's own, the production
release's and the site floor; the staging environment is never the release's choice."""

from __future__ import annotations

import pytest

from provisioner.policy.gate import rules_in_force

LAX = {"environment": "production", "min_nodes": 1, "soak_seconds": 0, "success_ratio": 0.5, "approvals": 1}
USUAL = {"environment": "staging", "min_nodes": 2, "soak_seconds": 3600, "success_ratio": 1.0, "approvals": 2}


def test_a_release_cannot_lower_the_bar_set_by_the_release_in_production():
    rules, source = rules_in_force(LAX, USUAL, None)
    assert rules == USUAL
    assert set(source.values()) == {"production release", "default"}


def test_a_stricter_new_release_is_judged_by_its_own_stricter_rules():
    stricter = {**USUAL, "approvals": 3}
    rules, source = rules_in_force(stricter, USUAL, None)
    assert rules["approvals"] == 3 and source["approvals"] == "release"


def test_the_site_floor_wins_where_it_is_stricter():
    rules, source = rules_in_force(LAX, None, {"approvals": 2, "soak_seconds": 60, "environment": "preprod"})
    assert (rules["approvals"], rules["soak_seconds"], rules["min_nodes"], rules["environment"]) == (2, 60, 1, "preprod")
    assert source["approvals"] == source["soak_seconds"] == source["environment"] == "site floor"


@pytest.mark.parametrize("floor", [None, {}, {"approvals": 1}])
def test_the_staging_environment_is_never_the_releases_own(floor):
    rules, _ = rules_in_force(LAX, None, floor)
    assert rules["environment"] == "staging"
