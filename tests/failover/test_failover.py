"""Failover with real processes and a real PostgreSQL: three workers, two boot servers, the lab.

Each round resets the lab's firmware to the factory versions by hand (drift), applies through the
workers, and breaks something while a node is mid-flash. What must hold, read from the BMCs' own
logs and the store: the rollout finishes, every component is flashed exactly once per round, the
node is taken over from its record by reading its BMC first, and a frozen worker writes nothing.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest
from cluster_site import (
    NODES,
    Cluster,
    assert_flashed_once,
    assert_limits_held,
    begins,
    finish,
    mid_flash,
    newest_rollout,
    round_apply,
    split_netboot,
    to_factory,
)
from sqlalchemy import text

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "pipeline"))
from helpers import copy_spec  # noqa: E402
from pipeline_site import Site, private_octet, tune_spec  # noqa: E402

from provisioner import pipeline  # noqa: E402
from provisioner.context import Context, Settings  # noqa: E402

LEASE_SECONDS = 12.0  # short, so a takeover waits little; long enough for heartbeats on a machine at load 100
ROUNDS = 10
FLASH_STEPS = ("oob_flash", "inband_flash")


@pytest.fixture(scope="module")
def cluster(pg_cluster, tmp_path_factory):
    from provisioner.lab.site import Lab

    tmp = tmp_path_factory.mktemp("failover")
    url = pg_cluster.create_database(f"failover_{os.getpid()}", template="prov_template")
    spec = tune_spec(copy_spec(tmp / "spec"), nodes=NODES,
                     rollout={"canary": 1, "wave_size": 3, "max_concurrency": 3, "max_unavailable_per_rack": 2,
                              "failure_threshold": 2})
    data = tmp / "data"
    site = Site(spec, data, Context(Settings(spec_dir=spec, data_dir=data, actor="alice", db_url=url)), db_url=url)
    rel = site.build()
    pipeline.promote(site.ctx, rel, "production", force_gate=True)
    octet = int(next(n.bmc.address for _, n in site.ctx.spec.nodes()).split(".")[1])
    c = Cluster(site, octet if octet else private_octet(), LEASE_SECONDS, tmp)
    try:
        serves = [c.start_serve(0), c.start_serve(1)]
        lab = Lab(site.ctx, serve=False, tftp=serves[0][1], http_base=serves[0][0]).start()
        split_netboot(lab, serves)
        c.lab = lab
        for _ in range(3):
            c.start_worker()
        c.wait_workers(3)
        yield c
    finally:
        c.stop()
        if getattr(c, "lab", None) is not None:
            c.lab.stop()
            c.lab.second_host.close()
        pg_cluster.drop_database(f"failover_{os.getpid()}")








def restart(pg) -> None:
    """pg_ctl stop, then start as PgCluster did (restart would tie the server's output to our pipe)."""
    opts = (f"-p {pg.port} -k {pg.dir} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off "
            f"-c full_page_writes=off -c max_connections=300")
    pg._as_owner(pg.pg_ctl, "-D", str(pg.data), "-m", "fast", "-w", "stop")
    pg._as_owner(pg.pg_ctl, "-D", str(pg.data), "-o", opts, "-l", str(pg.dir / "log"), "-w", "start")



@pytest.mark.parametrize("round_", range(ROUNDS))
def test_kill_9_of_the_worker_holding_a_node_mid_flash(cluster, round_):
    c = cluster
    before, after = to_factory(c), newest_rollout(c)
    apply = round_apply(c.site)
    step = FLASH_STEPS[round_ % 2]  # out-of-band (HPM through the BMC) and in-band (netboot) in turn
    rid, node = mid_flash(c, after, step)
    pid = c.holder_pid(node)
    assert pid is not None
    victim = c.worker_of(pid)
    os.kill(pid, signal.SIGKILL)
    victim.wait(10)
    c.workers.remove(victim)
    c.start_worker()  # three again for the next round
    finish(c, apply)
    assert_flashed_once(c, before)
    assert_limits_held(c, rid)
    # taken over from its record: the BMC is read again (a second prepare) after the flash step the
    # dead worker began (it may have got a step further before the kill landed), before any other
    steps = begins(c, rid, node)
    assert steps.count("prepare") == 2, steps
    resumed_at = steps.index("prepare", 1)
    assert step in steps[:resumed_at], steps
    assert any(f"worker.takeover rollout={rid} node={node}" in c.log_of(w) for w in c.workers)


def test_a_postgresql_restart_mid_rollout_loses_nothing(cluster, pg_cluster):
    c = cluster
    c.wait_workers(3)
    before, after = to_factory(c), newest_rollout(c)
    apply = round_apply(c.site)
    rid, _ = mid_flash(c, after, "inband_flash")
    restart(pg_cluster)
    finish(c, apply)
    assert_flashed_once(c, before)
    assert all(p.poll() is None for p in c.workers), "a worker exited over the restart"
    with c.db.connect() as conn:
        errors = conn.execute(text("SELECT count(*) FROM rollout_steps WHERE rollout_id = :r AND phase = 'error'"),
                              {"r": rid}).scalar()
    assert errors == 0
    verify = c.site.cli("audit", "verify")
    assert verify.returncode == 0, verify.stderr


def test_a_worker_frozen_past_its_lease_writes_nothing_when_it_wakes(cluster):
    c = cluster
    c.wait_workers(3)
    before, after = to_factory(c), newest_rollout(c)
    apply = round_apply(c.site)
    rid, node = mid_flash(c, after, "inband_flash")
    pid = c.holder_pid(node)
    frozen = c.worker_of(pid)
    os.kill(pid, signal.SIGSTOP)
    try:
        finish(c, apply)  # the others take its nodes over once its leases expire
        assert_flashed_once(c, before)
        counts = """SELECT (SELECT count(*) FROM rollout_steps), (SELECT count(*) FROM node_events),
                           (SELECT count(*) FROM audit_log), (SELECT string_agg(node || status || step, ',' ORDER BY node)
                            FROM rollout_nodes WHERE rollout_id = :r)"""
        with c.db.connect() as conn:
            still = conn.execute(text(counts), {"r": rid}).one()
            last_event = conn.execute(text("SELECT max(seq) FROM node_events")).scalar()
    finally:
        os.kill(pid, signal.SIGCONT)
    assert frozen.wait(30) == 75  # it saw its lease gone and stopped
    with c.db.connect() as conn:
        new_events = conn.execute(text("SELECT node, source, event, details FROM node_events WHERE seq > :s"),
                                  {"s": last_event}).all()
        assert conn.execute(text(counts), {"r": rid}).one() == still, new_events
    assert "lease" in c.log_of(frozen) and "stops" in c.log_of(frozen)
    c.workers.remove(frozen)
    c.start_worker()
