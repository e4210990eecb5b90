"""The netboot gate, as a pure function on plain data."""

from __future__ import annotations

import pytest
from helpers import REPO

from provisioner.netboot.gate import Blocked, decide
from provisioner.releases.build import freeze
from provisioner.releases.view import ReleaseView
from provisioner.spec.loader import load_spec

REL = freeze(load_spec(REPO))
VIEW = ReleaseView.of(REL)
NODE = VIEW.node("r1n01")
PINS = {c.name: c.version for c in VIEW.pins("r650")}
BIOS_BLOCK = Blocked("bios", "1.13.2", "boot loop, INC-4411")


def gate(state="active", observed=None, blocked=(), installed=None, node=NODE):
    return decide(node, state, VIEW, list(blocked), PINS if observed is None else observed, installed)


def test_an_unknown_mac_is_unknown():
    assert decide(None, "unknown", None, [], {}).action == "unknown"


def test_a_node_at_its_pins_with_nothing_scheduled_boots_locally():
    d = gate()
    assert (d.action, d.components) == ("local", ())


def test_a_node_scheduled_for_reimage_at_its_pins_gets_the_install_profile():
    d = gate("installing")
    assert d.action == "install" and d.profile == "ubuntu-2404" and d.release_id == REL.id


def test_a_node_already_installed_with_this_release_is_not_reimaged_again():
    assert gate("installing", installed=REL.id).action == "local"


def test_a_node_scheduled_for_flash_gets_only_the_components_that_differ():
    d = gate("flashing", observed={**PINS, "bios": "1.14.0", "nic": "22.0.0"})
    assert d.action == "flash" and d.profile == "flasher"
    assert [(c.name, c.from_version, c.version) for c in d.components] == [
        ("bios", "1.14.0", "1.13.2"), ("nic", "22.0.0", "22.31.6")]


def test_a_node_running_a_blocked_version_is_never_handed_an_install_config():
    observed = {**PINS, "bios": "1.12.1"}  # blocked in the example manifest
    for state in ("installing", "reprovisioning", "active", "new"):
        assert gate(state, observed=observed).action in ("flash", "hold")
    held = gate("active", observed=observed)
    assert held.action == "hold" and "blocked bios 1.12.1" in held.reason


def test_a_node_running_a_blocked_version_that_is_due_a_reimage_is_reflashed_first():
    d = gate("installing", observed={**PINS, "bios": "1.12.1"})
    assert d.action == "flash" and [c.name for c in d.components] == ["bios"]


def test_a_release_pinning_a_since_blocked_version_holds_every_node_instead_of_flashing_it():
    d = gate("flashing", observed={**PINS, "bios": "1.14.0"}, blocked=[BIOS_BLOCK])
    assert d.action == "hold" and "release pins blocked bios 1.13.2" in d.reason


def test_a_quarantined_node_is_held():
    assert gate("quarantined").action == "hold"


def test_a_node_that_never_reported_firmware_is_flashed_before_it_is_installed():
    d = gate("installing", observed={})
    assert d.action == "flash" and len(d.components) == 4


def test_no_release_means_local_boot():
    d = decide(NODE, "installing", None, [], {})
    assert d.action == "local" and "no release" in d.reason


@pytest.mark.parametrize("state", ["new", "active", "flashing", "installing", "reprovisioning", "held", "failed"])
def test_the_gate_never_flashes_a_blocked_version(state):
    for comp, version in PINS.items():
        d = gate(state, observed={}, blocked=[Blocked(comp, version, "bad")])
        assert all(not (c.name == comp and c.version == version) for c in d.components)
        assert d.action != "install"
