"""Nodes stuck `held` or `failed` get out through commands, and `status` never calls them compliant:
`unblock` releases a node it held, `node clear` (after a fresh BMC read) a failed one,
`node maintenance on|off` takes a node out of rollouts and back, every change audited."""

from __future__ import annotations

import pytest
from pipeline_site import read_json

from provisioner import pipeline

STAGING = {"s1n01", "s1n02"}  # two r650s, BIOS 1.13.2 from the lab's factory and the release


@pytest.fixture(scope="module")
def staging(tmp_path_factory):
    """Staging applied once for the whole module (the tests below only change node states)."""
    from helpers import copy_spec
    from pipeline_site import Site, tune_spec

    from provisioner.context import Context, Settings

    tmp = tmp_path_factory.mktemp("lifecycle")
    spec, data = tune_spec(copy_spec(tmp / "spec"), nodes=STAGING), tmp / "data"
    site = Site(spec, data, Context(Settings(spec_dir=spec, data_dir=data, actor="alice")))
    site.start_lab()
    r1 = site.build()
    pipeline.promote(site.ctx, r1, "staging")
    assert pipeline.apply(site.ctx, "staging").status == "done"
    yield site
    site.stop()


def states(site) -> dict[str, str]:
    return {n["node"]: n["state"] for n in read_json(site.cli("node", "list", "--json").stdout)}


def compliant(site) -> dict[str, bool]:
    return {r["node"]: r["compliant"] for r in read_json(site.cli("status", "staging", "--json").stdout)}


def test_unblock_releases_the_nodes_a_block_held_and_status_never_calls_them_compliant(staging):
    site = staging
    assert compliant(site) == {"s1n01": True, "s1n02": True}
    blocked = site.cli("block", "bios", "1.13.2", "--reason", "INC-7 scare", "--json")
    assert read_json(blocked.stdout)["marked"] == ["s1n01", "s1n02"]
    assert states(site) == {"s1n01": "held", "s1n02": "held"}
    assert compliant(site) == {"s1n01": False, "s1n02": False}
    human = site.cli("status", "staging")
    assert " yes " not in human.stdout, human.stdout

    lifted = site.cli("unblock", "bios", "1.13.2", "--reason", "false alarm")
    assert lifted.returncode == 0, lifted.stderr
    assert "released (nothing they run is blocked): s1n01, s1n02" in lifted.stdout
    assert states(site) == {"s1n01": "ready", "s1n02": "ready"}
    assert compliant(site) == {"s1n01": True, "s1n02": True}


def test_node_clear_reads_the_bmc_afresh_and_refuses_when_it_cannot(staging):
    site = staging
    site.ctx.store.transition_node("s1n01", "fail", "install: no report within 5s after power-on; "
                                   "presumed boot-looping")  # as a rollout leaves it
    assert compliant(site)["s1n01"] is False
    plan = {n["node"]: n for n in read_json(site.cli("plan", "staging", "--json").stdout)["nodes"]}
    assert plan["s1n01"]["action"] == "recover" and "presumed boot-looping" in plan["s1n01"]["reason"]

    site.lab.site.set_fault("s1n01", wrong_password=True)
    refused = site.cli("node", "clear", "s1n01", "--reason", "recovered by hand")
    assert refused.returncode == 7, refused.stderr
    assert "s1n01: BMC not read, node not cleared" in refused.stderr
    assert states(site)["s1n01"] == "failed"

    site.lab.site.set_fault("s1n01", wrong_password=False)
    cleared = site.cli("node", "clear", "s1n01", "--reason", "recovered by hand", "--json")
    assert cleared.returncode == 0, cleared.stderr
    out = read_json(cleared.stdout)
    assert (out["from"], out["state"], out["at_pins"]) == ("failed", "ready", True)
    assert [e["details"]["reason"] for e in site.ctx.store.audit_entries() if e["action"] == "node.clear"] == [
        "cleared: recovered by hand"]
    assert plan_action(site, "s1n01") != "recover"

    again = site.cli("node", "clear", "s1n01", "--reason", "twice")
    assert again.returncode == 3 and "node s1n01 is ready: it cannot take 'clear'" in again.stderr


def plan_action(site, node: str) -> str:
    return {n["node"]: n["action"] for n in read_json(site.cli("plan", "staging", "--json").stdout)["nodes"]}[node]


def test_a_node_in_maintenance_is_held_out_of_plans_until_given_back(staging):
    site = staging
    on = site.cli("node", "maintenance", "on", "s1n02", "--reason", "DIMM swap")
    assert on.returncode == 0, on.stderr
    assert states(site)["s1n02"] == "maintenance"
    plan = {n["node"]: n for n in read_json(site.cli("plan", "staging", "--json").stdout)["nodes"]}
    assert (plan["s1n02"]["action"], plan["s1n02"]["reason"]) == ("hold", "in maintenance: maintenance on: DIMM swap")

    shown = read_json(site.cli("node", "show", "s1n02", "--json").stdout)
    assert shown["state"] == "maintenance" and shown["why"] == "maintenance on: DIMM swap"
    assert shown["firmware"]["bios"] == {"observed": "1.13.2", "pinned": "1.13.2"}
    assert shown["last_rollout"]["node_status"] == "done"
    assert [s["step"] for s in shown["last_rollout"]["steps"] if s["phase"] == "begin"][-1] == "verify"
    assert shown["events"] and shown["events"][-1]["node"] == "s1n02"

    off = site.cli("node", "maintenance", "off", "s1n02", "--reason", "DIMM swapped")
    assert off.returncode == 0 and states(site)["s1n02"] == "ready"
    unknown = site.cli("node", "show", "s9n99")
    assert unknown.returncode == 4 and "no node 's9n99'" in unknown.stderr


def test_plan_never_calls_a_failed_node_nothing_and_holds_one_that_needs_hands():
    from helpers import REPO

    from provisioner.plan import Observed, make_plan
    from provisioner.releases.build import freeze
    from provisioner.releases.view import ReleaseView
    from provisioner.spec.loader import load_spec

    rel = freeze(load_spec(REPO))
    pins = {c["name"]: c["version"] for c in rel.document["manifests"]["r650"]["components"]}

    def planned(state, reason=""):
        o = Observed("s1n01", "s1", "r650", "staging", dict(pins), rel.id, None, state, reason)
        [n] = make_plan(ReleaseView.of(rel), "staging", [o], []).nodes
        return n.action, n.reason

    assert planned("active") == ("nothing", "at the pins, image of this release")
    assert planned("failed", "boot check: presumed boot-looping") == (
        "recover", "failed: boot check: presumed boot-looping")
    action, reason = planned("needs-hands", "bios 1.14.0 loops; no out-of-band path")
    assert action == "hold" and "`provisioner node clear s1n01 --reason ...`" in reason
    assert planned("maintenance", "DIMM swap") == ("hold", "in maintenance: DIMM swap")
