"""`provisioner audit verify` catches an edited and a deleted entry."""

from __future__ import annotations

import json
import sqlite3

from helpers import run_cli


def make_history(spec_dir, data):
    run_cli("release", "build", spec=spec_dir, data=data)
    from provisioner.context import Context, Settings

    ctx = Context(Settings(spec_dir=spec_dir, data_dir=data))
    ctx.store.block("bios", "9.9.9", "test block", by="ops")
    ctx.store.block("nic", "1.0.0", "test block", by="ops")
    ctx.store.unblock("nic", "1.0.0", by="ops", reason="false alarm")
    return data / "provisioner.db"


def test_an_untouched_audit_log_verifies(spec_dir, tmp_path):
    make_history(spec_dir, tmp_path / "data")
    r = run_cli("audit", "verify", "--json", spec=spec_dir, data=tmp_path / "data")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"ok": True, "entries": 4, "problems": []}


def test_audit_verify_catches_an_edited_entry(spec_dir, tmp_path):
    db = make_history(spec_dir, tmp_path / "data")
    con = sqlite3.connect(db)
    con.execute("UPDATE audit_log SET actor = 'someone-else' WHERE seq = 2")
    con.commit()
    r = run_cli("audit", "verify", spec=spec_dir, data=tmp_path / "data")
    assert r.returncode == 6
    assert "audit entry 2: was edited" in r.stderr


def test_audit_verify_catches_a_deleted_entry_in_the_middle(spec_dir, tmp_path):
    db = make_history(spec_dir, tmp_path / "data")
    con = sqlite3.connect(db)
    con.execute("DELETE FROM audit_log WHERE seq = 2")
    con.commit()
    r = run_cli("audit", "verify", spec=spec_dir, data=tmp_path / "data")
    assert r.returncode == 6
    assert "audit entry 2: missing" in r.stderr


def test_audit_verify_catches_the_newest_entry_deleted(spec_dir, tmp_path):
    db = make_history(spec_dir, tmp_path / "data")
    con = sqlite3.connect(db)
    con.execute("DELETE FROM audit_log WHERE seq = 4")
    con.commit()
    r = run_cli("audit", "verify", spec=spec_dir, data=tmp_path / "data")
    assert r.returncode == 6
    assert "newest entries were deleted" in r.stderr
