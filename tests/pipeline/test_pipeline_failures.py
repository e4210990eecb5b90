"""Failures during a rollout on the simulated site: a boot-looping node is given up on within the
policy's timeouts, and the rollout halts at its failure threshold, leaving untouched nodes alone."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from pipeline_site import LOOP_TIMEOUTS

from provisioner import pipeline
from provisioner.rollout.record import RolloutRecord

INSTALL_TIMEOUT = LOOP_TIMEOUTS["power"] + LOOP_TIMEOUTS["boot"] + LOOP_TIMEOUTS["callback"]
INBAND_TIMEOUT = LOOP_TIMEOUTS["power"] + LOOP_TIMEOUTS["boot"] + LOOP_TIMEOUTS["flash"]


def test_a_node_whose_bios_boot_loops_fails_as_presumed_boot_looping_within_the_policy_timeouts(make_site):
    site = make_site(rollout={"timeouts": LOOP_TIMEOUTS})
    r1 = site.build()
    pipeline.promote(site.ctx, r1, "staging")
    # The r650 BIOS the release pins, and the lab's r650s run, never finishes POST.
    site.lab.set_boot_loop("bios", "1.13.2")
    at = {}
    started = time.monotonic()
    result = pipeline.apply(site.ctx, "staging",
                            progress=lambda e: at.setdefault((e["event"], e.get("node"), e.get("step")),
                                                             time.monotonic()))
    elapsed = time.monotonic() - started

    assert result.status == "halted"
    assert result.failed == {"s1n01": f"install: no report within {INSTALL_TIMEOUT}s after power-on; "
                                      "presumed boot-looping"}
    waited = at[("node_failed", "s1n01", None)] - at[("node_step", "s1n01", "install")]
    assert INSTALL_TIMEOUT <= waited < INSTALL_TIMEOUT + 2, waited
    assert elapsed < INSTALL_TIMEOUT + 5, elapsed  # the whole rollout: BMC reads, one flash, the wait
    # it really was power-cycled into PXE and really looped: nothing of it reached our boot services
    log = site.bmc_log("s1n01")
    assert {"event": "power", "power": "cycle"}.items() <= log[-1].items()
    assert [e for e in site.lab.host.journal if e["node"] == "s1n01" and e["event"] == "boot_loop"]
    assert not [e for e in site.lab.host.journal if e["node"] == "s1n01" and e["event"] in ("pxe", "installed")]
    assert site.ctx.store.node("s1n01").state == "failed"


def test_a_rollout_halts_at_its_failure_threshold_and_names_the_failed_nodes_and_why(make_site):
    site = make_site(rollout={"failure_threshold": 2, "timeouts": LOOP_TIMEOUTS})
    r1 = site.build()
    pipeline.promote(site.ctx, r1, "production", force_gate=True)
    site.lab.site.hand_flash("r1n04", "raid", "52.20.9")
    site.lab.set_boot_loop("raid", "52.20.9")
    before = site.lab.status()

    # r1n03's BMC starts refusing its password once the rollout is planned (a BMC unreadable at
    # plan time is left alone instead): the canary r1n01 runs first, so it fails at its prepare
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(site.cli, "apply", "production", "--yes")
        while not RolloutRecord(site.ctx.store).rollouts("production") and not running.done():
            time.sleep(0.02)
        site.lab.site.set_fault("r1n03", wrong_password=True)
        out = running.result()

    assert out.returncode == 8, out.stdout + out.stderr
    assert "HALTED: 2 node(s) failed (threshold 2): r1n03: prepare: BmcAuthError:" in out.stdout
    assert (f"r1n04: in-band flash: no report within {INBAND_TIMEOUT}s after power-on; presumed boot-looping"
            in out.stdout)
    record = RolloutRecord(site.ctx.store)
    [rollout] = record.rollouts("production")
    status = {r.node: r.status for r in record.nodes(rollout.id)}
    assert {n for n, s in status.items() if s == "failed"} == {"r1n03", "r1n04"}
    assert {n for n, s in status.items() if s == "done"} == {"r1n01", "r1n02", "r1n05"}
    waves = {r.node: r.wave for r in record.nodes(rollout.id)}
    untouched = sorted(n for n, w in waves.items() if w >= 2)
    assert len(untouched) == 11 and all(status[n] == "pending" for n in untouched)
    assert not {s["node"] for s in record.steps(rollout.id)} & set(untouched)
    # nothing was done to them: no power cycle, no flash
    now = {n["name"]: n for n in site.lab.status()}
    for n in before:
        if n["name"] in untouched:
            assert (now[n["name"]]["boots"], now[n["name"]]["firmware"]) == (n["boots"], n["firmware"]), n["name"]
