"""The typed view of a frozen release: the spec's own models, read back from the stored document."""

from __future__ import annotations

import copy

import pytest
from helpers import REPO

from provisioner.netboot.gate import Blocked
from provisioner.plan import Observed, image_key, make_plan
from provisioner.releases.build import freeze
from provisioner.releases.view import ReleaseView
from provisioner.spec.loader import load_spec
from provisioner.spec.models import FirmwareComponent, Node


@pytest.fixture(scope="module")
def release():
    return freeze(load_spec(REPO))


def test_the_view_gives_pins_in_flashing_order_nodes_profiles_and_policy_as_spec_models(release):
    view = ReleaseView.of(release)
    pins = view.pins("r650")
    assert all(isinstance(c, FirmwareComponent) for c in pins)
    assert [(c.name, c.method, c.recovery) for c in pins] == [
        ("bmc", "hpm", None), ("bios", "inband", "hpm"), ("nic", "inband", None), ("raid", "inband", None)]
    assert view.pins("no-such-model") is None
    node = view.node("s1n01")
    assert isinstance(node, Node) and (view.rack_of("s1n01"), node.model, node.firmware) == ("s1", "r650", "uefi")
    assert view.profile(node.boot_profile).kind == "install"
    assert view.policy.protected("production") and not view.policy.protected("staging")
    assert view.allowed("r650")["bios"] == ["1.13.2", "1.14.0"]


def test_a_release_frozen_before_drift_action_was_removed_still_reads_and_its_document_is_untouched(release):
    old = copy.deepcopy(release.document)
    old["policy"]["rollout"]["drift_action"] = "reprovision"
    old["policy"]["environments"] = ["staging", "production"]
    before = copy.deepcopy(old)
    view = ReleaseView.of_document("old", old)
    assert old == before
    assert list(view.policy.environments) == ["staging", "production"]
    assert view.pins("dl360g10")[0].name == "bmc"


def test_the_plan_reads_the_release_through_the_view(release):
    view = ReleaseView.of(release)
    pins = {c.name: c.version for c in view.pins("r650")}
    at_pins = Observed("s1n01", "s1", "r650", "staging", pins, release.id, image_key(view, "s1n01"))
    old_bios = Observed("s1n02", "s1", "r650", "staging", {**pins, "bios": "1.12.1"}, "older", image_key(view, "s1n02"))
    plan = make_plan(view, "staging", [at_pins, old_bios], [Blocked("nic", "9.9.9", "test")])
    assert [(n.node, n.action, n.reason) for n in plan.nodes] == [
        ("s1n01", "nothing", "at the pins, image of this release"),
        ("s1n02", "reprovision", "runs blocked bios 1.12.1 (hangs at POST after a warm reset with SR-IOV enabled)")]
    assert image_key(view, "s1n01").startswith("ubuntu-2404|console=ttyS0,115200n8 ip=dhcp|")


def test_one_view_per_release_id_is_shared_by_its_readers(release):
    assert ReleaseView.of(release) is ReleaseView.of(release)
    assert ReleaseView.of_document(release.id, release.document) is not ReleaseView.of(release)


def test_the_boot_routes_validate_a_release_inventory_once_not_per_boot(spec_dir, tmp_path, monkeypatch):
    from helpers import built_site

    from provisioner.netboot.service import BootService
    from provisioner.spec import models

    ctx, rel = built_site(spec_dir, tmp_path / "data", state="installing")
    ReleaseView._views.pop(rel.id, None)  # as a fresh boot server process finds it
    validated = []
    real = models.Inventory.model_validate.__func__
    monkeypatch.setattr(models.Inventory, "model_validate",
                        classmethod(lambda cls, *a, **k: validated.append(1) or real(cls, *a, **k)))
    svc = BootService(ctx.store, ctx.artifacts, "http://127.0.0.1:8080")
    scripts = [svc.boot_config(n.macs[0], kind) for n in ctx.store.nodes() for kind in ("ipxe", "grub")]
    assert len(scripts) > 20 and all(f"provisioner.release={rel.id}" in s for s in scripts)
    assert len(validated) == 1


def test_release_diff_reads_both_releases_through_their_views(release):
    from provisioner.releases.diff import diff_releases

    old = copy.deepcopy(release.document)
    old["policy"]["rollout"]["drift_action"] = "reprovision"  # frozen before the key was removed: not a change
    old["manifests"]["r650"]["components"][1]["version"] = "1.12.1"
    changes = diff_releases(ReleaseView.of_document("old", old), ReleaseView.of(release))
    assert [str(c) for c in changes] == ["firmware: r650 bios 1.12.1 → 1.13.2"]
