"""Secrets stay secret (a BMC password from the environment is never printed; the lab's own secret file is
born 0600), and log records reach stderr only when asked, never mixed into what a command prints."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import REPO, copy_spec, private_spec
from inproc import run_main

SECRET = "Hunter2-from-the-env"


def test_a_running_lab_never_reports_a_password_that_came_from_the_environment(tmp_path, monkeypatch):
    from provisioner.context import Context, Settings
    from provisioner.lab.site import Lab

    monkeypatch.setenv("PROVISIONER_LAB_BMC_PASSWORD", SECRET)
    ctx = Context(Settings(spec_dir=private_spec(tmp_path), data_dir=tmp_path / "data", actor="test"))
    with Lab(ctx, serve=False, tftp=("127.0.0.1", 9), http_base="http://127.0.0.1:9") as lab:  # nothing boots
        status = lab.status()
    assert len(status) == 20
    assert all(n["password"] is None for n in status)
    assert SECRET not in json.dumps(status)


def test_lab_status_shows_the_labs_own_generated_password(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("PROVISIONER_LAB_BMC_PASSWORD", raising=False)
    spec, data = copy_spec(tmp_path / "spec"), tmp_path / "data"
    r = run_main(capsys, "lab", "status", "--json", spec=spec, data=data)
    assert r.code == 0, r.err
    generated = (data / "secrets" / "lab").read_text().strip()
    assert {n["password"] for n in json.loads(r.out)} == {generated}


def test_the_lab_secret_file_is_born_0600_not_chmod_ed_after_writing(tmp_path, monkeypatch):
    from provisioner.context import Context, Settings
    from provisioner.lab.site import ensure_lab_secret

    monkeypatch.delenv("PROVISIONER_LAB_BMC_PASSWORD", raising=False)
    # A chmod after writing leaves a moment where the secret is world-readable: forbid it.
    monkeypatch.setattr(os, "chmod", lambda *a, **k: None)
    monkeypatch.setattr(Path, "chmod", lambda *a, **k: None)
    old = os.umask(0o022)
    try:
        ctx = Context(Settings(spec_dir=copy_spec(tmp_path / "spec"), data_dir=tmp_path / "data", actor="t"))
        password = ensure_lab_secret(ctx, "lab")
    finally:
        os.umask(old)
    f = tmp_path / "data" / "secrets" / "lab"
    assert stat.S_IMODE(f.stat().st_mode) == 0o600
    assert stat.S_IMODE(f.parent.stat().st_mode) == 0o700
    assert len(password) >= 16 and ensure_lab_secret(ctx, "lab") == password  # kept, not regenerated


NOISY = textwrap.dedent("""
    import logging, sys
    from provisioner.cli import cli, main

    @cli.command()
    def noisy():
        \"\"\"A command whose work logs a warning, as a halting rollout does.\"\"\"
        logging.getLogger("provisioner.rollout").warning("rollout.halt reason=%s", "test")
        print("what people read")

    sys.exit(main(sys.argv[1:] + ["noisy"]))
""")


@pytest.mark.parametrize("asked", [None, "--log", "PROVISIONER_LOG"])
def test_log_records_reach_stderr_only_when_asked(tmp_path, asked):
    env = {k: v for k, v in os.environ.items() if k != "PROVISIONER_LOG"}
    args = []
    if asked == "--log":
        args = ["--log", "warning"]
    elif asked == "PROVISIONER_LOG":
        env["PROVISIONER_LOG"] = "info"
    r = subprocess.run([sys.executable, "-c", NOISY, "--data", str(tmp_path / "data"), *args], env=env,
                       capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "what people read\n"
    if asked is None:
        assert r.stderr == ""
    else:
        assert "WARNING provisioner.rollout rollout.halt reason=test" in r.stderr
