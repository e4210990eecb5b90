"""The systemd units in deploy/systemd pass `systemd-analyze verify`, and the commands they start
accept the options the units give them (for the commands that exist yet)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, need_tool

UNITS = sorted((REPO / "deploy" / "systemd").glob("*.service"))
INSTALLED = "/opt/provisioner/venv/bin/provisioner"
PENDING = {"api"}  # commands the units are written for ahead of time (see their NOTE)


def env_example() -> dict[str, str]:
    lines = (REPO / "deploy" / "systemd" / "provisioner.env.example").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def test_there_are_units_for_serve_worker_and_api():
    assert [u.name for u in UNITS] == ["provisioner-api.service", "provisioner-serve.service",
                                       "provisioner-worker.service"]


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_systemd_analyze_verify_accepts_the_unit(unit, tmp_path):
    need_tool("systemd-analyze")
    # verify checks that ExecStart's program exists: point it at this checkout's installed command
    here = Path(sys.executable).with_name("provisioner")
    copy = tmp_path / unit.name
    copy.write_text(unit.read_text().replace(INSTALLED, str(here)))
    r = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and not r.stderr.strip() and not r.stdout.strip(), r.stdout + r.stderr


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_the_command_line_of_the_unit_is_accepted_by_provisioner(unit):
    line = re.search(r"^ExecStart=(.*)$", unit.read_text(), re.M)[1]
    argv = shlex.split(re.sub(r"\$\{(\w+)\}", lambda m: env_example()[m[1]], line))
    assert argv[0] == INSTALLED
    if argv[1] in PENDING:
        assert f"`provisioner {argv[1]}` command arrives" in unit.read_text()
        return
    # --help after every option: click refuses an unknown option before it prints the help
    r = subprocess.run([sys.executable, "-m", "provisioner", *argv[1:], "--help"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
