"""Where things live: the protocols' logic does not import the servers or the web app, and every
error the app can meet says which HTTP status it is."""

from __future__ import annotations

import ast
from datetime import timedelta
from pathlib import Path

import provisioner
from provisioner import errors

PACKAGE = Path(provisioner.__file__).parent


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    return out | {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}


def test_netboot_imports_neither_the_web_app_nor_the_servers():
    for path in (PACKAGE / "netboot").glob("*.py"):
        bad = {m for m in imports(path) if m.startswith(("provisioner.api", "provisioner.serve"))}
        assert not bad, f"{path.name} imports {bad}"


def test_every_error_class_carries_an_http_status():
    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.ProvisionerError)]
    assert len(classes) > 15
    for c in classes:
        assert "http_status" in vars(c) or c.http_status == c.__mro__[1].http_status
        assert 400 <= c.http_status <= 599, c
    assert errors.TokenRefused.http_status == 403 and errors.ReportRefused.http_status == 409
    assert errors.ArtifactMismatch.http_status == 410 and errors.StoreError.http_status == 503


def test_a_store_error_in_a_route_is_a_503_problem_not_a_traceback(server, monkeypatch):
    def down(*_a, **_k):
        raise errors.StoreError("cannot open the store: database is locked")

    monkeypatch.setattr(server.ctx.store, "boot_view", down)
    status, headers, body = server.get("/boot/52-54-00-0a-02-06.ipxe")
    assert status == 503 and headers["content-type"] == "application/problem+json"
    assert b"database is locked" in body


def test_closed_boots_and_old_node_events_are_pruned_after_their_retention(server):
    from provisioner.store.boots import Retention

    store = server.ctx.store
    store.boots.expect("r2n06", "install", server.rel.id)
    store.boots.end("r2n06")
    assert store.node_events("r2n06")
    kept = store.boots.prune(Retention())  # the defaults keep what just happened
    assert kept == {"closed_boots": 0, "node_events": 0}
    pruned = store.boots.prune(Retention(closed_boots=timedelta(0), node_events=timedelta(0)))
    assert pruned["closed_boots"] >= 1 and pruned["node_events"] >= 1
    assert store.node_events("r2n06") == []
