"""Store failures end in one line and exit 5, saying what to do; no traceback, no password.

Run as a user would: the real `provisioner` command in a subprocess.
"""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from helpers import cli_here, need_root, need_tool, run_cli

from provisioner.store.db import Database


def one_line(r) -> str:
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


@pytest.mark.parametrize("url, says", [
    ("foo://user:s3cret@host/db", "no database driver for 'foo'"),
    ("sqlite:////proc/nope/x.db", "cannot create the store at sqlite:////proc/nope/x.db"),
    ("postgresql://prov:s3cret@127.0.0.1:1/db", "cannot reach the store at postgresql://prov:***@127.0.0.1:1/db"),
    ("postgresql+psycopg2://prov:s3cret@127.0.0.1/db", "pip install 'psycopg2-binary'"),
    ("not a url, s3cret", "not a database URL"),
], ids=["unknown-scheme", "unopenable-sqlite", "postgresql-refused", "no-psycopg2", "not-a-url"])
def test_a_store_that_cannot_be_opened_is_one_line_without_the_password(spec_dir, tmp_path, url, says):
    r = run_cli("--db", url, "release", "list", spec=spec_dir, data=tmp_path / "data")
    assert r.returncode == 5
    assert says in one_line(r)
    assert "s3cret" not in r.stderr + r.stdout


def test_postgresql_without_its_driver_names_the_package_to_install(spec_dir, tmp_path):
    # psycopg made unimportable, as in an installation without the driver
    code = ("import sys; sys.modules['psycopg'] = None; sys.argv[0] = 'provisioner'; "
            "from provisioner.cli import entry; entry()")
    r = subprocess.run([sys.executable, "-c", code, "--spec", str(spec_dir), "--data", str(tmp_path / "d"),
                        "--db", "postgresql://prov:s3cret@db1/provisioner", "release", "list"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 5
    assert "pip install 'psycopg[binary]'" in one_line(r)
    assert "s3cret" not in r.stderr


@pytest.fixture
def sqlite_site(spec_dir, tmp_path):
    data = tmp_path / "data"
    assert cli_here("release", "build", spec=spec_dir, data=data).returncode == 0
    assert cli_here("block", "bios", "9.9.9", "--reason", "INC-2", spec=spec_dir, data=data).returncode == 0
    return data


def test_a_database_with_corrupted_pages_is_one_line_and_exit_5(spec_dir, sqlite_site):
    import sqlite3

    db = sqlite_site / "provisioner.db"
    con = sqlite3.connect(db)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # every page in the main file, where the damage goes
    pages = dict(con.execute("SELECT name, rootpage FROM sqlite_master WHERE type = 'table'"))
    size = con.execute("PRAGMA page_size").fetchone()[0]
    con.close()
    with open(db, "r+b") as f:  # what a failing disk leaves: garbage where a table's first page was
        for table in ("releases", "nodes", "audit_log"):
            f.seek((pages[table] - 1) * size)
            f.write(b"\xa5" * size)
    for command in (["audit", "verify"], ["status"], ["release", "list"]):
        r = run_cli(*command, spec=spec_dir, data=sqlite_site)
        assert r.returncode == 5, (command, r.stderr)
        assert "is damaged (database disk image is malformed): restore it from a backup" in one_line(r)


@contextlib.contextmanager
def small_tmpfs(size: str):
    need_root()
    need_tool("mount", "umount")
    where = Path(tempfile.mkdtemp(prefix=f"prov-full-{os.getpid()}-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)
        where.rmdir()


def fill(where: Path) -> Path:
    filler = where / "filler"
    with contextlib.suppress(OSError), open(filler, "wb") as f:
        while True:
            f.write(b"\0" * 65536)
            f.flush()
    return filler


def test_a_full_disk_is_one_line_and_exit_5_and_loses_nothing(spec_dir):
    with small_tmpfs("4m") as data:
        assert cli_here("release", "build", spec=spec_dir, data=data).returncode == 0
        filler = fill(data)
        r = run_cli("block", "bios", "9.9.9", "--reason", "INC-3", spec=spec_dir, data=data)
        assert r.returncode == 5
        assert "is out of disk space" in one_line(r) and "free space on the disk" in r.stderr
        filler.unlink()
        r = run_cli("audit", "verify", "--json", spec=spec_dir, data=data)
        assert r.returncode == 0 and '"entries": 1' in r.stdout  # the release; the refused block left no trace
        assert cli_here("block", "bios", "9.9.9", "--reason", "INC-3", spec=spec_dir, data=data).returncode == 0


def test_the_database_and_its_wal_are_created_private(tmp_path):
    old = os.umask(0o022)  # a usual login umask: files would be 0644
    try:
        db = Database(f"sqlite:///{tmp_path / 'data' / 'provisioner.db'}")
        with db.write() as c:  # a write makes SQLite create the WAL and its index
            c.exec_driver_sql("INSERT INTO meta (key, value) VALUES ('k', 'v')")
            files = [tmp_path / "data" / n for n in ("provisioner.db", "provisioner.db-wal", "provisioner.db-shm")]
            modes = {f.name: oct(stat.S_IMODE(f.stat().st_mode)) for f in files}
        db.close()
    finally:
        os.umask(old)
    assert modes == {f.name: "0o600" for f in files}
