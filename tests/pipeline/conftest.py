"""Fixtures for the pipeline tests: a simulated site per test (see pipeline_site.py)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from helpers import copy_spec
from pipeline_site import Site, tune_spec

from provisioner.context import Context, Settings


@pytest.fixture
def make_site(tmp_path) -> Callable[..., Site]:
    """make_site(lab=True, db=None, rollout={...}, gate={...}, nodes={...}) -> Site; stopped at teardown.
    `db` is a store URL (the `store_url` fixture), default the embedded SQLite in the site's data dir."""
    sites: list[Site] = []

    def make(*, lab: bool = True, name: str = "site", db: str | None = None, **tuning) -> Site:
        spec = tune_spec(copy_spec(tmp_path / name / "spec"), **tuning)
        data = tmp_path / name / "data"
        site = Site(spec, data, Context(Settings(spec_dir=spec, data_dir=data, actor="alice", db_url=db)), db_url=db)
        sites.append(site)
        if lab:
            site.start_lab()
        return site

    yield make
    for s in sites:
        s.stop()


@pytest.fixture
def lab_site(make_site) -> Site:
    """The example site, fast policy, lab running, nothing released yet."""
    return make_site()
