"""`provisioner db status|upgrade|copy`: migrations run when asked (SQLite: on first use), never on
every open, and a SQLite installation moves to PostgreSQL with its audit chain intact."""

from __future__ import annotations

import json

import pytest
from helpers import cli_here, execute_raw

from provisioner.store.db import Database, migrate, normalize_url, schema_head


def cli(spec_dir, data, url, *args):
    return cli_here(*args, spec=spec_dir, data=data, db=url)


def one_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def test_a_postgresql_store_is_migrated_only_by_db_upgrade(spec_dir, tmp_path, pg_cluster):
    url = pg_cluster.create_database("behind")
    r = cli(spec_dir, tmp_path, url, "release", "list")
    assert r.returncode == 5
    assert "has no schema yet: run `provisioner db upgrade`" in one_line(r.stderr)

    from sqlalchemy import create_engine
    engine = create_engine(normalize_url(url))
    migrate(engine, "0003")  # as an older provisioner left it
    engine.dispose()
    r = cli(spec_dir, tmp_path, url, "release", "build")
    assert r.returncode == 5
    assert f"has schema revision 0003, this provisioner needs {schema_head()}: run `provisioner db upgrade`" \
        in one_line(r.stderr)
    assert json.loads(cli(spec_dir, tmp_path, url, "db", "status", "--json").stdout) == {
        "url": url, "revision": "0003", "head": schema_head(), "up_to_date": False}

    r = cli(spec_dir, tmp_path, url, "db", "upgrade")
    assert r.returncode == 0, r.stderr
    assert f"schema 0003 -> {schema_head()}" in r.stdout
    assert cli(spec_dir, tmp_path, url, "release", "build").returncode == 0
    assert json.loads(cli(spec_dir, tmp_path, url, "db", "status", "--json").stdout)["up_to_date"] is True
    assert "schema already at" in cli(spec_dir, tmp_path, url, "db", "upgrade").stdout


def test_opening_a_store_at_the_newest_schema_runs_no_migration(store_url, monkeypatch):
    Database(store_url, upgrade=True).close()
    import provisioner.store.db as db

    def refuse(*_a, **_k):
        raise AssertionError("Alembic ran on open")

    monkeypatch.setattr(db.command, "upgrade", refuse)
    d = Database(store_url)
    assert d.revision == schema_head()
    d.close()


def history(spec_dir, data, url):
    assert cli(spec_dir, data, url, "release", "build").returncode == 0
    rid = json.loads(cli(spec_dir, data, url, "release", "list", "--json").stdout)[0]["id"]
    for args in (["promote", rid[:12], "--to", "staging"], ["block", "bios", "9.9.9", "--reason", "INC-1 bricks"],
                 ["unblock", "bios", "9.9.9", "--reason", "false alarm"]):
        r = cli(spec_dir, data, url, *args)
        assert r.returncode == 0, r.stderr
    return rid


def test_db_copy_moves_a_sqlite_installation_to_postgresql(spec_dir, tmp_path, pg_cluster):
    sqlite = f"sqlite:///{tmp_path / 'data' / 'provisioner.db'}"
    rid = history(spec_dir, tmp_path / "data", sqlite)
    before = json.loads(cli(spec_dir, tmp_path / "data", sqlite, "audit", "verify", "--json").stdout)
    pg = pg_cluster.create_database("moved")

    r = cli(spec_dir, tmp_path / "data", sqlite, "db", "copy", "--to", pg)
    assert r.returncode == 0, r.stderr
    assert f"{before['entries']} audit entries (chain verified)" in r.stdout

    after = json.loads(cli(spec_dir, tmp_path / "data", pg, "audit", "verify", "--json").stdout)
    assert after == before and after["ok"]
    for what in (["release", "list", "--json"], ["history", "--json"], ["audit", "log", "--json"]):
        assert cli(spec_dir, tmp_path / "data", pg, *what).stdout == cli(spec_dir, tmp_path / "data", sqlite, *what).stdout
    # The store goes on from where the copy ended: new rows get new ids, the chain grows.
    r = cli(spec_dir, tmp_path / "data", pg, "promote", rid[:12], "--to", "staging")
    assert r.returncode == 0, r.stderr
    assert cli(spec_dir, tmp_path / "data", pg, "block", "nic", "1.0.0", "--reason", "x").returncode == 0
    assert json.loads(cli(spec_dir, tmp_path / "data", pg, "audit", "verify", "--json").stdout)["entries"] == \
        before["entries"] + 2

    r = cli(spec_dir, tmp_path / "data", sqlite, "db", "copy", "--to", pg)
    assert r.returncode == 5
    assert "already holds data" in one_line(r.stderr)


def test_db_copy_of_a_tampered_chain_commits_nothing(spec_dir, tmp_path, pg_cluster):
    sqlite = f"sqlite:///{tmp_path / 'data' / 'provisioner.db'}"
    history(spec_dir, tmp_path / "data", sqlite)
    execute_raw(sqlite, "UPDATE audit_log SET actor = 'mallory' WHERE seq = 2")
    pg = pg_cluster.create_database("tampered")
    r = cli(spec_dir, tmp_path / "data", sqlite, "db", "copy", "--to", pg)
    assert r.returncode == 6
    assert "audit entry 2: was edited" in one_line(r.stderr)
    assert json.loads(cli(spec_dir, tmp_path / "data", pg, "release", "list", "--json").stdout) == []


@pytest.mark.parametrize("url", ["postgres://prov@h/db", "postgresql://prov@h/db"])
def test_postgresql_urls_mean_psycopg_3(url):
    assert normalize_url(url) == "postgresql+psycopg://prov@h/db"
