"""Golden files for every template and decision: a change to a boot config is a reviewed diff.

Regenerate after an intended change with: UPDATE_GOLDEN=1 make test PYTEST_ARGS=tests/netboot/test_templates_golden.py
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from helpers import REPO

from provisioner.netboot.gate import Blocked, decide
from provisioner.netboot.render import Renderer, context_for
from provisioner.releases.artifacts import ArtifactStore
from provisioner.releases.build import freeze, import_artifacts
from provisioner.releases.view import ReleaseView
from provisioner.spec.loader import load_spec

GOLDEN = Path(__file__).parent / "golden"
REL = freeze(load_spec(REPO))
VIEW = ReleaseView.of(REL)
NODE = VIEW.node("r1n02")
PINS = {c.name: c.version for c in VIEW.pins("r650")}
MAC = NODE.macs[0]

SCENARIOS = {
    "install": dict(state="installing", observed=PINS),
    "flash": dict(state="flashing", observed={**PINS, "bios": "1.14.0", "raid": "52.0.1"}),
    "hold": dict(state="active", observed={**PINS, "bios": "1.12.1"}),
    "local": dict(state="active", observed=PINS),
}


@pytest.fixture(scope="module")
def renderer(tmp_path_factory):
    store = ArtifactStore(tmp_path_factory.mktemp("artifacts"))
    import_artifacts(REPO, REL, store)
    return Renderer(store)


def check(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN") or not path.exists():
        path.write_text(text)
    assert text == path.read_text(), f"{name} differs from its golden file"


CASES = [(a, k) for a in SCENARIOS for k in ("ipxe", "pxelinux", "grub")] + [("flash", "flasher")]


@pytest.mark.parametrize("action,kind", CASES, ids=[f"{a}-{k}" for a, k in CASES])
def test_each_decision_renders_exactly_its_golden_config(renderer, action, kind):
    d = decide(NODE, SCENARIOS[action]["state"], VIEW, [], SCENARIOS[action]["observed"])
    assert d.action == action
    v = context_for(d, VIEW, NODE, mac=MAC, http_base="http://10.0.0.1:8080", token="TOKEN")
    text = renderer.render(d, kind, VIEW, v)
    check(f"{action}.{kind}", text.replace(REL.id, "RELEASE_ID").replace(REL.id[:12], "RELEASE"))
    if kind == "flasher":
        cfg = json.loads(text)
        assert [(c["name"], c["version"]) for c in cfg["components"]] == [("bios", "1.13.2"), ("raid", "52.26.0")]
        assert all(c["url"].endswith(c["sha256"]) for c in cfg["components"])


@pytest.mark.parametrize("kind", ["ipxe", "pxelinux", "grub"])
def test_an_unknown_mac_renders_a_local_boot(renderer, kind):
    d = decide(None, "unknown", None, [], {})
    v = context_for(d, VIEW, None, mac="52:54:00:ff:ff:ff", http_base="http://10.0.0.1:8080", token=None)
    check(f"unknown.{kind}", renderer.render(d, kind, VIEW, v).replace(REL.id[:12], "RELEASE"))


def test_the_hold_config_says_why_and_boots_nothing_destructive(renderer):
    d = decide(NODE, "installing", VIEW, [Blocked("nic", "22.31.6", "link flaps")], PINS)
    v = context_for(d, VIEW, NODE, mac=MAC, http_base="http://h", token="T")
    text = renderer.render(d, "ipxe", VIEW, v)
    assert "HELD: release pins blocked nic 22.31.6: link flaps" in text
    assert "kernel" not in text and "boot" not in text.replace("#!ipxe", "").split("HELD")[1]
