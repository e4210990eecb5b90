"""kill -9 in the middle of `provisioner apply`, then `apply` again: the same rollout resumes from
its record, every node ends done, no firmware is flashed twice and no step record is lost.

The lab runs in its own process (`provisioner lab up`) so that killing the apply process kills
only the pipeline: the BMCs, the hosts and the boot services live on, as at a real site.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from pipeline_site import read_json
from sqlalchemy import create_engine
from sqlalchemy.exc import OperationalError

from provisioner import pipeline
from provisioner.rollout.engine import STEPS
from provisioner.rollout.record import RolloutRecord
from provisioner.store.db import normalize_url

PRODUCTION = [f"r{r}n0{i}" for r in (1, 2) for i in range(1, 9)]
# What the first rollout from the lab's factory firmware changes, per model (one change each)
CHANGES = {"r1": {"bmc": ("7.00.60", "7.10.30")}, "r2": {"nic": ("14.30.0", "14.32.1")}}


def first(steps, node_filter, step, phase="begin"):
    return next((n for n, s, p in steps if s == step and p == phase and node_filter(n)), None)


# Each: where to kill, as a function of (step rows, node rows) -> the node caught mid-step, or None.
KILL_POINTS = {
    "the canary's out-of-band flash has begun": lambda steps, nodes: first(steps, lambda n: n == "r1n01", "oob_flash"),
    "a dl360g10's in-band flash has begun": lambda steps, nodes: first(steps, lambda n: n.startswith("r2"),
                                                                        "inband_flash"),
    "an install in wave 1 has begun": lambda steps, nodes: first(steps, lambda n: nodes[n][1] == 1, "install"),
    "half the fleet is done, mid-wave": lambda steps, nodes: next(
        (n for n, (st, _) in sorted(nodes.items()) if st == "running"), None)
    if sum(st == "done" for st, _ in nodes.values()) >= 8 else None,
}


_sqlite_engines: dict = {}


def read_record(db):
    """The rollout record as the apply process left it, read behind its back (SQLite or PostgreSQL):
    `db` is an engine, or the path of a SQLite file."""
    if isinstance(db, str | Path):
        db = _sqlite_engines.setdefault(str(db), create_engine(f"sqlite:///{db}"))
    try:
        with db.connect() as c:
            steps = c.exec_driver_sql("SELECT node, step, phase FROM rollout_steps ORDER BY seq").fetchall()
            nodes = {n: (st, w) for n, st, w in c.exec_driver_sql("SELECT node, status, wave FROM rollout_nodes")}
    except OperationalError:  # locked for a moment
        return [], {}
    return steps, nodes


def kill_when(proc, db, point, within: float = 60.0):
    """SIGKILL `proc` as soon as the record shows `point`; return the node caught then."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        steps, nodes = read_record(db)
        node = KILL_POINTS[point](steps, nodes) if nodes else None
        if node:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
            return node
        if proc.poll() is not None:
            pytest.fail(f"apply ended (exit {proc.returncode}) before {point}: {proc.stderr.read()[-2000:]}")
        time.sleep(0.01)
    proc.kill()
    pytest.fail(f"{point}: not reached within {within}s")


@pytest.mark.parametrize("store_url, point", [("sqlite", p) for p in KILL_POINTS]
                         + [("postgresql", "a dl360g10's in-band flash has begun")], indirect=["store_url"])
def test_apply_killed_mid_rollout_resumes_the_same_rollout_without_flashing_any_node_twice(make_site, store_url, point):
    site = make_site(lab=False, db=store_url)
    r1 = site.build()
    pipeline.promote(site.ctx, r1, "production", force_gate=True)  # the gate is tested elsewhere
    up = site.cli("lab", "up", "--json")
    assert up.returncode == 0, up.stderr
    db = create_engine(normalize_url(store_url))
    env = {**{k: v for k, v in os.environ.items() if k != "PROVISIONER_DB"}, **site.env}
    proc = subprocess.Popen([sys.executable, "-m", "provisioner", "apply", "production", "--yes", "--json"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        caught = kill_when(proc, db, point)
        assert proc.returncode == -signal.SIGKILL
        record = RolloutRecord(site.ctx.store)
        [killed] = record.rollouts("production")
        assert killed.status == "running"
        assert {r.node: r.status for r in record.nodes(killed.id)}[caught] == "running"

        again = site.cli("apply", "production", "--yes", "--json")
        assert again.returncode == 0, again.stderr
        result = read_json(again.stdout)
        assert f"resuming rollout {killed.id} from its record" in again.stderr
        assert (result["rollout"], result["status"], result["failed"]) == (killed.id, "done", {})
        assert sorted(result["done"]) == PRODUCTION
        assert [(r.id, r.status) for r in record.rollouts()] == [(killed.id, "done")]
        assert {r.node: r.status for r in record.nodes(killed.id)} == dict.fromkeys(PRODUCTION, "done")

        # no record lost: every step of every node began and then ended (or was skipped), no errors
        steps = record.steps(killed.id)
        assert not [s for s in steps if s["phase"] == "error"]
        for row in record.nodes(killed.id):
            mine = [(s["step"], s["phase"]) for s in steps if s["node"] == row.node]
            for step in STEPS[row.action]:
                phases = [p for s, p in mine if s == step]
                assert phases and phases[0] == "begin" and phases[-1] in ("end", "skip"), (row.node, step, mine)
        verify = site.cli("audit", "verify")
        assert verify.returncode == 0, verify.stderr
    finally:
        db.dispose()
        if proc.poll() is None:
            proc.kill()
        down = site.cli("lab", "down")
    assert down.returncode == 0, down.stderr

    # what the BMCs saw (their state file, written as the lab stopped): one change per component
    state = {}
    for name in ("bmc-state.json", "redfish-state.json"):  # the IPMI and the Redfish BMCs
        state.update(json.loads((site.data / "lab" / name).read_text())["nodes"])
    for node in PRODUCTION:
        changes = Counter(e["component"] for e in state[node]["log"]
                          if e["event"] in ("activated", "inband_flash", "hand_flash"))
        expected = CHANGES[node[:2]]
        assert changes == Counter(list(expected)), (node, state[node]["log"])
        for comp, (_, new) in expected.items():
            assert state[node]["firmware"][comp] == {"active": new, "pending": None}, node
    for node in ("s1n01", "s1n02", "s1n03", "s1n04"):  # another environment: never touched
        assert state[node]["boots"] == 0 and not state[node]["log"], node
