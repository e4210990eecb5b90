"""Stored releases and artifacts cannot be changed: attempts are refused and the original is intact."""

from __future__ import annotations

import pytest
from helpers import execute_raw
from sqlalchemy.exc import DBAPIError

from provisioner.context import Context, Settings
from provisioner.errors import ArtifactMismatch, ReleaseError
from provisioner.releases.artifacts import ArtifactStore
from provisioner.releases.build import freeze
from provisioner.store.models import ReleaseRow

# What an intruder with database access would run to lift the database's own refusal.
DROP_TRIGGER = {"sqlite": "DROP TRIGGER releases_no_update",
                "postgresql": "DROP TRIGGER releases_immutable ON releases"}


@pytest.fixture
def ctx(spec_dir, tmp_path, store_url):
    c = Context(Settings(spec_dir=spec_dir, data_dir=tmp_path / "data", db_url=store_url))
    yield c
    c.store.db.close()


def test_updating_a_stored_release_through_the_store_is_refused(ctx):
    rel = freeze(ctx.spec)
    ctx.store.add_release(rel, "alice")
    with pytest.raises(ReleaseError, match="immutable"):
        with ctx.store.db.session() as s:
            s.get(ReleaseRow, rel.id).author = "mallory"
    assert ctx.store.get_release(rel.id).canonical == rel.canonical
    assert ctx.store.release_meta(rel.id)["author"] == "alice"


def test_the_database_itself_refuses_an_update_or_delete_of_a_release(ctx, store_url):
    rel = freeze(ctx.spec)
    ctx.store.add_release(rel, "alice")
    with pytest.raises(DBAPIError, match="immutable"):
        execute_raw(store_url, f"UPDATE releases SET document = '{{}}' WHERE id = '{rel.id}'")
    with pytest.raises(DBAPIError, match="immutable"):
        execute_raw(store_url, f"DELETE FROM releases WHERE id = '{rel.id}'")
    assert ctx.store.get_release(rel.id).canonical == rel.canonical


def test_a_release_altered_behind_the_stores_back_is_detected_on_read(ctx, store_url):
    rel = freeze(ctx.spec)
    ctx.store.add_release(rel, "alice")
    execute_raw(store_url, DROP_TRIGGER[ctx.store.db.engine.dialect.name],
                "UPDATE releases SET document = replace(document, '1.13.2', '1.13.3')")
    with pytest.raises(ReleaseError, match="was altered"):
        ctx.store.get_release(rel.id)


def test_an_artifact_is_written_once_and_read_only(tmp_path):
    store = ArtifactStore(tmp_path / "a")
    digest = store.put(b"bios image")
    path = store.path(digest)
    assert path.stat().st_mode & 0o222 == 0
    assert store.put(b"bios image") == digest  # same bytes: a no-op
    with pytest.raises(ArtifactMismatch):
        store.put(b"other bytes", expected=digest)
    assert store.read(digest) == b"bios image"


def test_a_tampered_artifact_is_refused_on_read_and_never_overwritten(tmp_path):
    store = ArtifactStore(tmp_path / "a")
    digest = store.put(b"bios image")
    path = store.path(digest)
    path.chmod(0o644)
    path.write_bytes(b"evil image")
    with pytest.raises(ArtifactMismatch, match="altered"):
        store.read(digest)
    with pytest.raises(ArtifactMismatch):
        store.put(b"bios image")  # re-storing does not silently paper over the tampering
