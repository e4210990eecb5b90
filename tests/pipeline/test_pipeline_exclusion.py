"""Two operators at once: `apply` from two processes on one environment. The environment's lease in
the store lets one run; the other is refused (exit 9) naming the holder and since when. A holder
frozen past its lease is taken over, and when it wakes it writes nothing (fencing).

The lab runs in its own process (`provisioner lab up`), as at a real site: the BMCs' own logs, in
the state file the lab writes as it stops, say what was flashed and how often.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
from pipeline_site import FIRMWARE_CHANGES, read_json
from test_pipeline_resume import read_record

from provisioner import pipeline
from provisioner.rollout.record import RolloutRecord

NODES = {"r1n01", "r1n02", "r1n03", "r2n01", "r2n02"}
CHANGES = {"r1": ["bmc"], "r2": ["nic"]}  # one component changes per model from the lab's factory firmware


def popen_apply(site, *args, env=None):
    e = {**os.environ, "PROVISIONER_SPEC": str(site.spec), "PROVISIONER_DATA": str(site.data), **(env or {})}
    e.pop("PROVISIONER_DB", None)
    return subprocess.Popen([sys.executable, "-m", "provisioner", "apply", "production", "--yes", *args],
                            env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture
def production(make_site):
    site = make_site(lab=False, nodes=NODES)
    r1 = site.build()
    pipeline.promote(site.ctx, r1, "production", force_gate=True)
    up = site.cli("lab", "up", "--json")
    assert up.returncode == 0, up.stderr
    yield site
    site.cli("lab", "down")


def flashes_per_component(site) -> dict[str, Counter]:
    """After `lab down`: per node, how often each component's firmware changed, from the BMCs' logs."""
    down = site.cli("lab", "down")
    assert down.returncode == 0, down.stderr
    state = {}
    for kind in ("bmc-state.json", "redfish-state.json"):  # IPMI and Redfish BMCs keep their own files
        if (site.data / "lab" / kind).exists():
            state.update(json.loads((site.data / "lab" / kind).read_text())["nodes"])
    return {n: Counter(e["component"] for e in s["log"] if e["event"] in FIRMWARE_CHANGES) for n, s in state.items()}


def test_two_apply_processes_at_once_one_runs_and_the_other_is_refused_naming_the_holder(production):
    site = production
    first = popen_apply(site, "--json")
    time.sleep(0.2)  # the two shells, 0.2 s apart
    second = popen_apply(site, "--json")
    outs = {p.pid: p.communicate(timeout=300) for p in (first, second)}

    codes = sorted((p.returncode, p.pid) for p in (first, second))
    assert [c for c, _ in codes] == [0, 9], {pid: err[-1500:] for pid, (_, err) in outs.items()}
    (_, winner), (_, loser) = codes
    err = outs[loser][1]
    assert "environment production is busy" in err or "environment production is busy" in err.replace("\n", " ")
    assert f":{winner}:" in err and " since " in err and "UTC" in err, err
    assert "Traceback" not in err
    result = read_json(outs[winner][0])
    assert (result["status"], sorted(result["done"])) == ("done", sorted(NODES))
    assert [r.status for r in RolloutRecord(site.ctx.store).rollouts("production")] == ["done"]

    changes = flashes_per_component(site)
    for node in NODES:
        assert changes[node] == Counter(CHANGES[node[:2]]), (node, changes[node])


def test_a_frozen_holder_is_taken_over_after_its_lease_expires_and_writes_nothing_when_it_wakes(production):
    site = production
    db = site.data / "provisioner.db"
    lease = 15.0  # long enough for the refused `apply` to start on a loaded machine (seen: 8 s)
    fast = {"PROVISIONER_LEASE_SECONDS": str(lease)}
    first = popen_apply(site, env=fast)
    try:
        deadline = time.monotonic() + 120
        # frozen between two writes (a writer frozen inside its transaction would block SQLite for all):
        # the canary's install began and the node was sent to `installing`; it now drives its BMC
        while not (any(s == "install" and p == "begin" for _, s, p in read_record(db)[0])
                   and site.ctx.store.node("r1n01").state == "installing"):
            assert first.poll() is None, first.stderr.read()
            assert time.monotonic() < deadline, "the canary's install never began"
            time.sleep(0.01)
        os.kill(first.pid, signal.SIGSTOP)  # frozen mid-step (a paused VM, a stuck NFS mount)
        frozen_at = time.monotonic()

        refused = site.cli("apply", "production", "--yes")
        assert refused.returncode == 9, refused.stderr
        assert f":{first.pid}:" in refused.stderr and "rollout watch" in refused.stderr

        time.sleep(max(0.0, frozen_at + lease + 0.5 - time.monotonic()))  # its lease expires: nobody renews it
        again = run_apply(site, fast)
        assert again.returncode == 0, again.stderr
        result = read_json(again.stdout)
        [rollout] = RolloutRecord(site.ctx.store).rollouts("production")
        assert (result["rollout"], result["status"]) == (rollout.id, "done")
        assert f"resuming rollout {rollout.id} from its record" in again.stderr
        steps_before = len(RolloutRecord(site.ctx.store).steps(rollout.id))
    finally:
        os.kill(first.pid, signal.SIGCONT)
    _, err = first.communicate(timeout=120)

    assert first.returncode == 9, err
    assert "expired or was taken over" in err or "expired before their heartbeat" in err or "not renewed" in err, err
    record = RolloutRecord(site.ctx.store)
    assert len(record.steps(rollout.id)) == steps_before  # the woken holder wrote no step
    assert record.rollout(rollout.id).status == "done"
    changes = flashes_per_component(site)
    for node in NODES:
        assert changes[node] == Counter(CHANGES[node[:2]]), (node, changes[node])


def run_apply(site, env: dict):
    from helpers import run_cli

    return run_cli("apply", "production", "--yes", "--json", spec=site.spec, data=site.data, env=env,
                   timeout=300)


def test_apply_wait_waits_for_the_holder_of_another_host_and_then_runs(make_site):
    from provisioner.rollout.lease import Leases
    from provisioner.store.repo import now

    site = make_site(nodes={"r1n01"})
    r1 = site.build()
    pipeline.promote(site.ctx, r1, "production", force_gate=True)
    other = Leases(site.ctx.store, seconds=3, holder="ops2.example:4242:feedc0de")
    with site.ctx.store.db.write() as c:  # another host's apply, alive: it renews its lease
        other.take(c, "environment:production", "rollout 7 (apply) of production")
    other.start_heartbeat()
    try:
        refused = site.cli("apply", "production", "--yes")
        assert refused.returncode == 9, refused.stderr
        assert refused.stderr.startswith("error: environment production is busy: rollout 7 (apply) of production, "
                                         "held by ops2.example:4242:feedc0de since ")
        assert f"{now():%Y-%m-%d}" in refused.stderr and "apply --wait" in refused.stderr

        waiting = popen_apply(site, "--wait", "--json")
        first_line = waiting.stderr.readline()
        assert first_line.startswith("waiting for production: rollout 7 (apply) of production, held by "
                                     "ops2.example:4242:feedc0de"), first_line
        assert waiting.poll() is None
    finally:
        other.stop()
        other.release_all()  # the other apply ends
    out, err = waiting.communicate(timeout=120)
    assert waiting.returncode == 0, err
    assert read_json(out)["done"] == ["r1n01"]
