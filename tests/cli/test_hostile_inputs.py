"""A corpus of hostile and clumsy inputs, each run through the `provisioner` command: one line on stderr,
the documented exit code, no traceback, no secret printed, and nothing lost in the store (`audit verify`
passes and the audit log did not shrink).

Add a case by appending a `Hostile(...)` row to CORPUS; `setup` may break the spec copy (or anything
under the case's private directory) before the command runs. The store is shared by every row.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from helpers import built_site, copy_spec
from inproc import run_main

BMC_SECRET = "Hunter2-not-for-print"
SHADOW = "root:$6$VERYSECRET$hash:20228:0:99999:7:::\ndaemon:*:20228:0:99999:7:::\n"


@dataclass(frozen=True)
class Hostile:
    id: str
    args: tuple[str, ...]
    code: int                      # the documented exit code (README, "Exit codes")
    says: str                      # words the one stderr line carries
    setup: Callable[[Path], None] | None = None  # gets the case's spec copy
    env: dict = field(default_factory=dict)
    never: tuple[str, ...] = ()    # must appear nowhere in stdout or stderr
    stderr_lines: int = 1          # 0 for a command that succeeds quietly on stderr


# -- ways to break a spec copy --------------------------------------------------------------------
def replace(rel: str, old: str, new: str):
    def setup(spec: Path):
        p = spec / rel
        text = p.read_text()
        assert old in text, f"case out of date: {old!r} not in {rel}"
        p.write_text(text.replace(old, new, 1))
    return setup


def write(rel: str, text: str | bytes):
    def setup(spec: Path):
        p = spec / rel
        p.write_bytes(text) if isinstance(text, bytes) else p.write_text(text)
    return setup


def link(rel: str, target: str):
    def setup(spec: Path):
        if target == "OUTSIDE":
            outside = spec.parent / "shadow"
            outside.write_text(SHADOW)
            to = str(outside)
        else:
            to = target
        (spec / rel).unlink()
        (spec / rel).symlink_to(to)
    return setup


def fifo(rel: str):
    def setup(spec: Path):
        (spec / rel).unlink()
        os.mkfifo(spec / rel)
    return setup


def laughs(levels: int = 7) -> str:
    lines = ["l0: &l0 [" + ", ".join(["lol"] * 9) + "]"]
    lines += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


DHCP = ("dhcp", "render", "--interface", "eth1")
CORPUS = [
    # -- the spec directory (exit 2) ---------------------------------------------------------------
    Hostile("billion-laughs-policy", ("validate",), 2, "policy.yaml: (alias): aliases expand to",
            write("policy.yaml", laughs())),
    Hostile("nested-100k-deep", ("validate",), 2, "policy.yaml:1: (syntax): nested deeper than",
            write("policy.yaml", "rollout: " + "[" * 100_000 + "]" * 100_000 + "\n")),
    Hostile("5000-digit-integer", ("validate",), 2, "an integer of 5000 digits",
            replace("policy.yaml", "wave_size: 4 ", "wave_size: " + "7" * 5000 + " ")),
    Hostile("recursive-alias", ("validate",), 2, "an alias inside its own anchor",
            write("deny-list.yaml", "blocked: &x [*x]\n")),
    Hostile("template-links-to-shadow", ("validate",), 2, "templates/local.ipxe.j2: (file): resolves to",
            link("templates/local.ipxe.j2", "OUTSIDE"), never=("VERYSECRET",)),
    Hostile("release-build-template-links-to-shadow", ("release", "build"), 2, "templates/local.ipxe.j2: (file)",
            link("templates/local.ipxe.j2", "OUTSIDE"), never=("VERYSECRET",)),
    Hostile("policy-links-to-dev-zero", ("validate",), 2, "policy.yaml: (file): resolves to /dev/zero",
            link("policy.yaml", "/dev/zero")),
    Hostile("deny-list-is-a-fifo", ("validate",), 2, "deny-list.yaml: (file): is a FIFO", fifo("deny-list.yaml")),
    Hostile("inventory-links-to-shadow", ("validate",), 2, "inventory.yaml: (file): resolves to",
            link("inventory.yaml", "OUTSIDE"), never=("VERYSECRET", "daemon")),
    Hostile("inventory-is-a-shadow-copy", ("validate",), 2, "none of its top-level keys is a field",
            write("inventory.yaml", SHADOW), never=("VERYSECRET", "daemon")),
    Hostile("inventory-is-binary", ("validate",), 2, "inventory.yaml: (file): is not UTF-8 text",
            write("inventory.yaml", bytes(range(256)) * 4)),
    Hostile("policy-is-a-list", ("validate",), 2, "policy.yaml:1: (document): is not a mapping",
            write("policy.yaml", "- 1\n- 2\n")),
    Hostile("python-object-tag", ("validate",), 2, "policy.yaml",
            write("policy.yaml", "rollout: !!python/object/apply:os.system ['true']\n")),
    Hostile("spec-file-too-big", ("validate",), 2, "more than the 1,048,576 allowed",
            write("deny-list.yaml", "blocked: []\n" + "#" * (1 << 20) + "\n")),
    # -- options and arguments (exit 2) ------------------------------------------------------------
    Hostile("dhcp-server-ip-999", DHCP + ("--server-ip", "999.1.1.1"), 2, "'--server-ip': '999.1.1.1' is not an IP"),
    Hostile("dhcp-server-ip-ipv6", DHCP + ("--server-ip", "fe80::1"), 2, "'--server-ip': fe80::1 is IPv6"),
    Hostile("dhcp-range-bogus", DHCP + ("--server-ip", "10.0.0.1", "--range", "bogus"), 2,
            "'--range': 'bogus' is not a range"),
    Hostile("dhcp-range-backwards", DHCP + ("--server-ip", "10.0.0.1", "--range", "10.0.0.9,10.0.0.1"), 2,
            "starts after it ends"),
    Hostile("dhcp-proxy-range-bogus", DHCP + ("--server-ip", "10.0.0.1", "--mode", "proxy", "--range", "bogus"), 2,
            "'--range': 'bogus' is not a subnet"),
    Hostile("dhcp-proxy-range-elsewhere", DHCP + ("--server-ip", "10.0.0.1", "--mode", "proxy", "--range",
                                                  "192.0.2.0/24"), 2, "does not contain the server 10.0.0.1"),
    Hostile("dhcp-interface-injects-a-directive", ("dhcp", "render", "--server-ip", "10.0.0.1", "--interface",
                                                   "eth1\ndhcp-script=/tmp/x"), 2, "is not an interface name"),
    Hostile("dhcp-unknown-environment", DHCP + ("--server-ip", "10.0.0.1", "--environment", "prod"), 2,
            "unknown environment 'prod'"),
    Hostile("dhcp-port-0", DHCP + ("--server-ip", "10.0.0.1", "--http-port", "0"), 2, "'--http-port'"),
    Hostile("lab-fault-unknown-node", ("lab", "fault", "--node", "nosuch", "--unreachable"), 2,
            "no node 'nosuch' in the inventory", never=("KeyError",)),
    Hostile("lab-fault-node-typo", ("lab", "fault", "--node", "r1nO1", "--unreachable"), 2, "did you mean 'r1n01'?"),
    Hostile("lab-fault-hand-flash-without-equals", ("lab", "fault", "--node", "r1n01", "--hand-flash", "nic"), 2,
            "'nic' is not COMPONENT=VERSION"),
    Hostile("lab-fault-hand-flash-empty-version", ("lab", "fault", "--node", "r1n01", "--hand-flash", "nic="), 2,
            "is not COMPONENT=VERSION"),
    Hostile("lab-fault-boot-loop-unknown-component", ("lab", "fault", "--boot-loop", "biso=1.0"), 2,
            "no manifest has a component 'biso'; did you mean 'bios'?"),
    Hostile("lab-fault-loss-over-1", ("lab", "fault", "--node", "r1n01", "--loss", "5"), 2, "'--loss'"),
    Hostile("lab-fault-negative-delay", ("lab", "fault", "--node", "r1n01", "--slow", "-1"), 2, "'--slow'"),
    Hostile("block-model-typo", ("block", "bios", "1.13.2", "--model", "r65O", "--reason", "x"), 2,
            "no hardware model 'r65O' in the inventory; did you mean 'r650'?"),
    Hostile("block-component-typo", ("block", "biso", "1.13.2", "--reason", "x"), 2,
            "no manifest has a component 'biso'; did you mean 'bios'?"),
    Hostile("block-empty-component", ("block", "", "1.0", "--reason", "x"), 2, "the component of a block cannot be empty"),
    Hostile("block-empty-version", ("block", "bios", " ", "--reason", "x"), 2, "the version of a block cannot be empty"),
    Hostile("block-empty-reason", ("block", "bios", "1.0", "--reason", ""), 2, "the reason of a block cannot be empty"),
    Hostile("netboot-decide-not-a-mac", ("netboot", "decide", "zz:zz"), 2, "is not a MAC address"),
    Hostile("spec-max-file-bytes-0", ("--spec-max-file-bytes", "0", "validate"), 2, "--spec-max-file-bytes"),
    Hostile("log-level-bogus", ("--log", "loud", "validate"), 2, "'--log'"),
    # -- unknown things (exit 4) --------------------------------------------------------------------
    Hostile("release-show-unknown", ("release", "show", "nosuch"), 4, "no release 'nosuch'"),
    Hostile("rollback-to-unknown", ("rollback", "production", "--to", "nosuch", "--yes"), 4, "no release 'nosuch'"),
    # -- secrets --------------------------------------------------------------------------------------
    Hostile("lab-status-with-password-env", ("lab", "status", "--json"), 0, "",
            env={"PROVISIONER_LAB_BMC_PASSWORD": BMC_SECRET}, never=(BMC_SECRET,), stderr_lines=0),
    Hostile("lab-status-table-with-password-env", ("lab", "status"), 0, "",
            env={"PROVISIONER_LAB_BMC_PASSWORD": BMC_SECRET}, never=(BMC_SECRET,), stderr_lines=0),
]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """One store with the example spec released and every environment pointed at it."""
    root = tmp_path_factory.mktemp("hostile")
    spec = copy_spec(root / "spec")
    built_site(spec, root / "data")
    return root / "spec", root / "data"


def audit_state(capsys, spec: Path, data: Path) -> int:
    r = run_main(capsys, "audit", "verify", "--json", spec=spec, data=data)
    assert r.code == 0, f"audit verify failed after the case: {r.err}"
    import json

    return json.loads(r.out)["entries"]


@pytest.mark.parametrize("case", CORPUS, ids=[c.id for c in CORPUS])
def test_hostile_input_is_one_line_and_the_documented_exit_code(case, site, tmp_path, capsys, monkeypatch):
    base_spec, data = site
    before = audit_state(capsys, base_spec, data)
    spec = tmp_path / "spec"
    shutil.copytree(base_spec, spec, symlinks=True)
    if case.setup:
        case.setup(spec)
    for k, v in case.env.items():
        monkeypatch.setenv(k, v)

    r = run_main(capsys, *case.args, spec=spec, data=data)  # an escaping exception fails here: a traceback

    assert "Traceback" not in r.out + r.err
    assert r.code == case.code, (r.code, r.err)
    assert len(r.err_lines) == case.stderr_lines, r.err
    if case.stderr_lines:
        assert r.err_lines[0].startswith("error: ") and case.says in r.err_lines[0], r.err
    for word in case.never:
        assert word not in r.out + r.err, f"{word!r} was printed"
    assert audit_state(capsys, base_spec, data) >= before
