"""Suite-wide hooks and fixtures. Shared helpers (need_tool, need_root, copy_spec, ...) live in
helpers.py: a module named `conftest` is not a safe thing to import from (tests/pipeline has one too)."""

from __future__ import annotations

import pytest


def pytest_terminal_summary(terminalreporter):
    skipped = terminalreporter.stats.get("skipped", [])
    if skipped:
        terminalreporter.write_sep("!", f"{len(skipped)} TESTS SKIPPED — see reasons above", red=True)


@pytest.fixture
def spec_dir(tmp_path):
    """A private, writable copy of the example spec."""
    from helpers import copy_spec

    return copy_spec(tmp_path / "spec")


@pytest.fixture(scope="session")
def pg_cluster():
    """One throw-away PostgreSQL cluster for the whole run, with a template database at the newest schema."""
    from helpers import PgCluster

    from provisioner.store.db import Database

    cluster = PgCluster()
    try:
        Database(cluster.create_database("prov_template"), upgrade=True).close()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    """The store's URL, once per backend: a SQLite file, or a fresh PostgreSQL database copied from
    the migrated template (tens of milliseconds, not a migration per test)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store' / 'provisioner.db'}"
        return
    cluster = request.getfixturevalue("pg_cluster")
    name = f"t_{request.node.name[:40].lower()}_{id(request) & 0xffffff:x}".replace("[", "_").replace("]", "")
    name = "".join(c if c.isalnum() else "_" for c in name)
    yield cluster.create_database(name, template="prov_template")
    cluster.drop_database(name)
