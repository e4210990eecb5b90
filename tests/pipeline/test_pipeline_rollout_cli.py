"""Seeing a rollout: `rollout list`, `rollout show ID` (per node: wave, each step's begin, end and
outcome), `rollout watch ID` (live, read-only, until it ends); the progress knows its total."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from pipeline_site import read_json
from test_pipeline_resume import read_record

from provisioner import pipeline

NODES = {"r1n01", "r1n02", "r2n01"}


def test_rollout_watch_follows_a_running_rollout_to_its_end_and_show_lists_every_step(make_site):
    site = make_site(nodes=NODES)
    r1 = site.build()
    pipeline.promote(site.ctx, r1, "production", force_gate=True)
    e = {**os.environ, "PROVISIONER_SPEC": str(site.spec), "PROVISIONER_DATA": str(site.data)}
    e.pop("PROVISIONER_DB", None)
    apply = subprocess.Popen([sys.executable, "-m", "provisioner", "apply", "production", "--yes"], env=e,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not read_record(site.data / "provisioner.db")[0]:  # the rollout's first step began
        assert apply.poll() is None and time.monotonic() < deadline, apply.communicate()[1]
        time.sleep(0.01)

    watched = site.cli("rollout", "watch", "1", "--interval", "0.2")
    apply.communicate(timeout=120)

    assert apply.returncode == 0 and watched.returncode == 0, watched.stderr
    lines = watched.stdout.splitlines()
    assert lines[-1] == "rollout 1 done: 3 node(s) at release " + r1[:12]
    for node in NODES:
        assert any(f" {node} verify end" in ln for ln in lines), (node, lines)

    listed = read_json(site.cli("rollout", "list", "--json").stdout)
    assert [(r["id"], r["kind"], r["status"], r["environment"]) for r in listed] == [(1, "apply", "done", "production")]

    shown = read_json(site.cli("rollout", "show", "1", "--json").stdout)
    assert shown["status"] == "done" and shown["holder"] is None
    by_node = {n["node"]: n for n in shown["nodes"]}
    assert sorted(by_node) == sorted(NODES)
    assert [n["node"] for n in shown["nodes"] if n["wave"] == 0] == ["r1n01"]
    for n in shown["nodes"]:
        assert [s["step"] for s in n["steps"]] == ["prepare", "oob_flash", "inband_flash", "install", "verify"]
        assert all(s["begin"] and s["end"] and s["outcome"] in ("ok", "skipped") for s in n["steps"]), n
        assert all(s["begin"] <= s["end"] for s in n["steps"])
    human = site.cli("rollout", "show", "1")
    assert "canary" in human.stdout and "verify:ok" in human.stdout
    missing = site.cli("rollout", "show", "99")
    assert missing.returncode == 4 and "no rollout 99" in missing.stderr


def test_the_progress_knows_its_total_before_the_first_node_ends(make_site):
    site = make_site(nodes=NODES)
    r1 = site.build()
    pipeline.promote(site.ctx, r1, "production", force_gate=True)
    events = []
    pipeline.apply(site.ctx, "production", progress=events.append)
    kinds = [e["event"] for e in events]
    total = events[kinds.index("total")]
    assert (total["nodes"], total["done"]) == (3, 0)
    assert kinds.index("total") < kinds.index("node_done")
    assert {(e["node"], e["step"]) for e in events if e["event"] == "node_step"} >= {("r1n01", "install")}
