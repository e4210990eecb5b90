"""Ctrl-C during a rollout: the first SIGINT/SIGTERM lets the running step end, starts nothing new
and records the rollout `interrupted` (exit 130); `apply` resumes it. A second signal stops at once,
recorded. A rollback killed at any moment resumes as a rollback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from pipeline_site import read_json
from test_pipeline_resume import read_record

from provisioner import pipeline
from provisioner.rollout.record import RolloutRecord

NODES = {"r1n01", "r1n02", "r2n01"}


def start(site, *args):
    e = {**os.environ, "PROVISIONER_SPEC": str(site.spec), "PROVISIONER_DATA": str(site.data)}
    e.pop("PROVISIONER_DB", None)
    return subprocess.Popen([sys.executable, "-m", "provisioner", *args], env=e,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(proc, db, what, within: float = 120.0):
    deadline = time.monotonic() + within
    while not what(*read_record(db)):
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "never reached"
        time.sleep(0.01)


def read_lines(stream) -> tuple[list[str], threading.Thread]:
    """Lines of `stream` as they come, read by a thread of their own (join it for the rest)."""
    lines: list[str] = []

    def pump():
        for line in stream:
            lines.append(line)

    t = threading.Thread(target=pump, daemon=True)
    t.start()
    return lines, t


def wait_until(proc, what, within: float = 60.0):
    deadline = time.monotonic() + within
    while not what():
        assert proc.poll() is None, "exited before the condition held"
        assert time.monotonic() < deadline, "never reached"
        time.sleep(0.01)


def canary_install_began(steps, nodes):
    return any(n == "r1n01" and s == "install" and p == "begin" for n, s, p in steps)


@pytest.fixture
def production(make_site):
    site = make_site(nodes=NODES)
    r1 = site.build()
    pipeline.promote(site.ctx, r1, "production", force_gate=True)
    return site


def test_the_first_sigint_lets_the_running_step_end_starts_nothing_new_and_apply_resumes(production):
    site = production
    proc = start(site, "apply", "production", "--yes", "--json")
    wait_for(proc, site.data / "provisioner.db", canary_install_began)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)

    assert proc.returncode == 130, err
    assert "SIGINT: rollout 1: starting nothing new" in err
    result = read_json(out)
    assert result["status"] == "interrupted" and result["interrupted"] == {"r1n01": "verify"}
    record = RolloutRecord(site.ctx.store)
    assert record.rollout(1).status == "interrupted"
    steps = [(s["node"], s["step"], s["phase"]) for s in record.steps(1)]
    assert ("r1n01", "install", "end") in steps  # the running step reached its end
    assert {n for n, _, _ in steps} == {"r1n01"}  # wave 1 never started
    assert site.boots()["r1n02"] == 0 and site.boots()["r2n01"] == 0

    again = site.cli("apply", "production", "--yes", "--json")
    assert again.returncode == 0, again.stderr
    assert "resuming rollout 1 from its record" in again.stderr
    assert sorted(read_json(again.stdout)["done"]) == sorted(NODES)
    for node in NODES:
        assert len(site.firmware_changes(node)) == 1, (node, site.firmware_changes(node))


def test_a_second_sigterm_stops_at_once_recorded_interrupted(production):
    site = production
    proc = start(site, "apply", "production", "--yes")
    wait_for(proc, site.data / "provisioner.db", canary_install_began)
    site.lab.set_boot_loop("bmc", "7.10.30")  # the canary never reports: only a second signal ends the wait
    lines, reader = read_lines(proc.stderr)
    proc.send_signal(signal.SIGTERM)
    # As an operator does: the second signal after the first one's message. Python runs a handler
    # once for signals that arrive before it gets to run, so a fixed pause is not enough on a busy host.
    wait_until(proc, lambda: any(line.startswith("SIGTERM: rollout 1") for line in lines))
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    reader.join(10)
    err = "".join(lines)

    assert proc.returncode == 130, err
    assert "SIGTERM again: rollout 1 stops now, recorded interrupted" in err
    r = RolloutRecord(site.ctx.store).rollout(1)
    assert (r.status, r.reason) == ("interrupted", "stopped at once by a second signal; nodes mid-step are "
                                                   "picked up on resume")
    site.lab.set_boot_loop("bmc", "7.10.30", on=False)
    again = site.cli("apply", "production", "--yes", "--json")
    assert again.returncode == 0, again.stderr
    assert read_json(again.stdout)["status"] == "done"


def test_a_rollback_killed_after_it_repointed_the_environment_resumes_as_a_rollback(production, tmp_path):
    site = production
    from provisioner.demo import bump_bios

    assert pipeline.apply(site.ctx, "production").status == "done"
    spec2 = tmp_path / "spec-v2"
    bump_bios(site.spec, spec2)
    r2 = site.build(spec2)
    pipeline.promote(site.context(spec2), r2, "production", force_gate=True)
    assert pipeline.apply(site.context(spec2), "production").status == "done"

    proc = start(site, "rollback", "production", "--yes")
    deadline = time.monotonic() + 120
    while not [h for h in site.ctx.store.environment_history("production") if h["reason"].startswith("rollback")]:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-2000:]
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)  # kill -9 as soon as the environment points back
    proc.wait(10)

    again = site.cli("apply", "production", "--yes", "--json")
    assert again.returncode == 0, again.stderr
    out = read_json(again.stdout)
    assert (out["kind"], out["status"]) == ("rollback", "done"), again.stderr
    kinds = [(r.kind, r.status) for r in RolloutRecord(site.ctx.store).rollouts("production")]
    assert kinds == [("apply", "done"), ("apply", "done"), ("rollback", "done")]
