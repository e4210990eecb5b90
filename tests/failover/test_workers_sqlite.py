"""Workers on the embedded SQLite store: claims through the one writer's lock and the lease rows,
callbacks by polling. Two `provisioner worker` processes run a rollout `apply` hands them, within
the rollout's limits, flashing every component once; with no worker alive `apply` runs it itself."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from cluster_site import (
    NODES,
    Cluster,
    assert_flashed_once,
    assert_limits_held,
    finish,
    newest_rollout,
    round_apply,
    to_factory,
)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "pipeline"))
from helpers import copy_spec  # noqa: E402
from pipeline_site import Site, tune_spec  # noqa: E402

from provisioner import pipeline  # noqa: E402
from provisioner.context import Context, Settings  # noqa: E402


@pytest.fixture(scope="module")
def sqlite_site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sqlite-workers")
    spec = tune_spec(copy_spec(tmp / "spec"), nodes=NODES,
                     rollout={"canary": 1, "wave_size": 3, "max_concurrency": 3, "max_unavailable_per_rack": 2})
    data = tmp / "data"
    url = f"sqlite:///{data / 'provisioner.db'}"
    site = Site(spec, data, Context(Settings(spec_dir=spec, data_dir=data, actor="alice", db_url=url)), db_url=url)
    pipeline.promote(site.ctx, site.build(), "production", force_gate=True)
    site.start_lab()  # with its boot services, in this process, on the same store
    c = Cluster(site, 0, 6.0, tmp)
    c.lab = site.lab
    try:
        yield c
    finally:
        c.stop()
        site.stop()


def test_apply_with_no_worker_alive_runs_the_rollout_itself(sqlite_site):
    c = sqlite_site
    before = to_factory(c)
    apply = round_apply(c.site)
    out, err = apply.communicate(timeout=600)
    assert apply.returncode == 0, err[-3000:]
    assert "handed to" not in err
    assert_flashed_once(c, before)


def test_two_workers_run_the_rollout_apply_hands_them(sqlite_site):
    c = sqlite_site
    workers = [c.start_worker(), c.start_worker()]
    c.wait_workers(2)
    before, after = to_factory(c), newest_rollout(c)
    apply = round_apply(c.site)
    finish(c, apply)
    assert_flashed_once(c, before)
    assert_limits_held(c, newest_rollout(c))
    assert newest_rollout(c) == (after or 0) + 1
    ran = [c.log_of(w).count("worker.node ") for w in workers]
    assert sum(ran) == len(NODES), ran
