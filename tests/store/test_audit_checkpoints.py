"""The audit chain anchored outside the database: signed checkpoints catch a chain rewritten
consistently, a truncated chain and an emptied database, which the hash chain alone calls intact."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from datetime import datetime

import pytest
from helpers import run_cli

from provisioner.context import Context, Settings
from provisioner.store import audit, checkpoints
from provisioner.store.checkpoints import Checkpointer


def history(ctx: Context, n: int) -> None:
    for i in range(n):
        ctx.store.audit(f"op{i % 3}", "release.approve", "R", {"comment": f"entry {i}"})


@pytest.fixture
def signed(tmp_path):
    """A store with 6 entries, a checkpoint at 4 and one at 6; the checkpoint file and public key
    copied off the server (to tmp_path/offsite)."""
    data = tmp_path / "data"
    ctx = Context(Settings(spec_dir=tmp_path, data_dir=data))
    key, file = data / checkpoints.KEY_FILE, data / checkpoints.CHECKPOINT_FILE
    history(ctx, 4)
    signer = Checkpointer(ctx.store, key, file, every_entries=2, every_seconds=3600)
    assert signer.tick().seq == 4
    history(ctx, 1)
    assert signer.tick() is None  # one new entry: not yet
    history(ctx, 1)
    assert signer.tick().seq == 6
    offsite = tmp_path / "offsite"
    offsite.mkdir()
    (offsite / "checkpoints.jsonl").write_bytes(file.read_bytes())
    (offsite / "audit.pub").write_bytes(checkpoints.public_path(key).read_bytes())
    return ctx, data, offsite


def verify(tmp_path, data, offsite):
    return run_cli("audit", "verify", "--checkpoints", str(offsite / "checkpoints.jsonl"),
                   "--public-key", str(offsite / "audit.pub"), spec=tmp_path, data=data)


def test_the_signing_key_is_created_0600_and_checkpoints_verify(signed, tmp_path):
    ctx, data, offsite = signed
    assert stat.S_IMODE(os.stat(data / checkpoints.KEY_FILE).st_mode) == 0o600
    r = verify(tmp_path, data, offsite)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "audit log intact: 6 entries, chain verified, anchored by 2 signed checkpoint(s)"


def test_a_chain_rewritten_consistently_is_caught(signed, tmp_path):
    ctx, data, offsite = signed
    con = sqlite3.connect(data / "provisioner.db")
    con.execute("UPDATE audit_log SET actor = 'mallory' WHERE seq = 2")
    con.commit()
    rows = con.execute("SELECT seq, at, actor, action, subject, details FROM audit_log ORDER BY seq").fetchall()
    prev = audit.GENESIS  # recompute every hash and the head, as a writer with the database's keys could
    for seq, at, actor, action, subject, details in rows:
        h = audit.entry_hash(prev, seq, datetime.fromisoformat(at), actor, action, subject, json.loads(details))
        con.execute("UPDATE audit_log SET prev_hash = ?, hash = ? WHERE seq = ?", (prev, h, seq))
        prev = h
    con.execute("UPDATE meta SET value = ? WHERE key = 'audit_head'", (f"{rows[-1][0]}:{prev}",))
    con.commit()
    assert ctx.store.verify_audit() == (6, [])  # the hash chain alone is fooled
    alone = run_cli("audit", "verify", "--checkpoints", str(offsite / "none.jsonl"), "--public-key",
                    str(offsite / "audit.pub"), spec=tmp_path, data=data)
    assert alone.returncode == 6 and "cannot read the checkpoint file" in alone.stderr
    r = verify(tmp_path, data, offsite)
    assert r.returncode == 6, r.stdout
    assert "audit entry 4: differs from the checkpoint signed at" in r.stderr
    assert "audit entry 6: differs from the checkpoint signed at" in r.stderr


def test_a_truncated_chain_is_caught(signed, tmp_path):
    ctx, data, offsite = signed
    con = sqlite3.connect(data / "provisioner.db")
    con.execute("DELETE FROM audit_log WHERE seq > 3")
    head = con.execute("SELECT hash FROM audit_log WHERE seq = 3").fetchone()[0]
    con.execute("UPDATE meta SET value = ? WHERE key = 'audit_head'", (f"3:{head}",))
    con.commit()
    r = verify(tmp_path, data, offsite)
    assert r.returncode == 6
    assert "audit entry 4: signed at" in r.stderr and "the audit log was truncated: the chain ends at entry 3" in r.stderr


def test_an_emptied_database_is_caught(signed, tmp_path):
    """Once: "audit log intact: 0 entries", exit 0."""
    ctx, data, offsite = signed
    ctx.store.db.close()
    for f in data.glob("provisioner.db*"):
        f.unlink()
    r = verify(tmp_path, data, offsite)
    assert r.returncode == 6
    assert "audit entry 6: signed at" in r.stderr and "the audit log was emptied" in r.stderr
    default = run_cli("audit", "verify", spec=tmp_path, data=data)  # the server's own files, found by default
    assert default.returncode == 6 and "the audit log was emptied" in default.stderr


def test_a_checkpoint_signed_by_another_key_is_refused(signed, tmp_path):
    ctx, data, offsite = signed
    checkpoints.create_key(tmp_path / "other.key")
    r = run_cli("audit", "verify", "--checkpoints", str(offsite / "checkpoints.jsonl"), "--public-key",
                str(tmp_path / "other.pub"), spec=tmp_path, data=data)
    assert r.returncode == 6 and r.stderr.count("is not signed by this public key") == 2


def test_audit_checkpoint_signs_now_and_logs_it(tmp_path, caplog):
    data = tmp_path / "data"
    ctx = Context(Settings(spec_dir=tmp_path, data_dir=data))
    history(ctx, 2)
    with caplog.at_level("INFO", logger="provisioner.audit"):
        cp = Checkpointer(ctx.store, tmp_path / "k" / "signer.key", tmp_path / "k" / "cp.jsonl").tick()
    assert f"audit.checkpoint seq=2 hash={cp.hash}" in caplog.text and cp.sig in caplog.text
    r = run_cli("audit", "checkpoint", "--json", spec=tmp_path, data=data)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["seq"] == 2
    line = json.loads((data / checkpoints.CHECKPOINT_FILE).read_text().splitlines()[-1])
    assert line["seq"] == 2 and line["sig"]
    assert stat.S_IMODE(os.stat(data / checkpoints.KEY_FILE).st_mode) == 0o600


def test_the_signer_signs_after_its_interval_even_below_its_entry_count(tmp_path):
    ctx = Context(Settings(spec_dir=tmp_path, data_dir=tmp_path / "data"))
    history(ctx, 1)
    signer = Checkpointer(ctx.store, tmp_path / "k.key", tmp_path / "cp.jsonl", every_entries=1000, every_seconds=3600)
    assert signer.tick().seq == 1  # the first look always signs
    history(ctx, 1)
    assert signer.tick() is None  # 1 entry of 1000, 0 of 60 minutes
    signer.every_seconds = 0
    assert signer.tick().seq == 2
    assert signer.tick() is None  # the head has not moved: nothing new to sign
