"""`provisioner audit verify` catches an edited and a deleted entry, on SQLite and on PostgreSQL."""

from __future__ import annotations

import json

import pytest
from helpers import cli_here, execute_raw

from provisioner.context import Context, Settings


def make_history(spec_dir, data, url):
    r = cli_here("release", "build", spec=spec_dir, data=data, db=url)
    assert r.returncode == 0, r.stderr
    ctx = Context(Settings(spec_dir=spec_dir, data_dir=data, db_url=url))
    ctx.store.block("bios", "9.9.9", "test block", by="ops")
    ctx.store.block("nic", "1.0.0", "test block", by="ops")
    ctx.store.unblock("nic", "1.0.0", by="ops", reason="false alarm")
    ctx.store.db.close()


def test_an_untouched_audit_log_verifies(spec_dir, tmp_path, store_url):
    make_history(spec_dir, tmp_path / "data", store_url)
    r = cli_here("audit", "verify", "--json", spec=spec_dir, data=tmp_path / "data", db=store_url)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"ok": True, "entries": 4, "problems": []}


@pytest.mark.parametrize("tamper, says", [
    ("UPDATE audit_log SET actor = 'someone-else' WHERE seq = 2", "audit entry 2: was edited"),
    ("DELETE FROM audit_log WHERE seq = 2", "audit entry 2: missing"),  # one in the middle
    ("DELETE FROM audit_log WHERE seq = 4", "newest entries were deleted"),
], ids=["edited", "deleted-in-the-middle", "newest-deleted"])
def test_audit_verify_catches_tampering(spec_dir, tmp_path, store_url, tamper, says):
    make_history(spec_dir, tmp_path / "data", store_url)
    execute_raw(store_url, tamper)
    r = cli_here("audit", "verify", spec=spec_dir, data=tmp_path / "data", db=store_url)
    assert r.returncode == 6
    assert says in r.stderr
