"""`drift` reports and `drift --fix` acts; `plan ENV -o FILE` then `apply FILE` applies exactly that
plan or refuses when the release or the BMCs changed since; a protected environment is changed only
after a "y" on a terminal or with --yes."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
import time

import pytest
from pipeline_site import LOOP_TIMEOUTS, read_json

from provisioner import pipeline
from provisioner.rollout.record import RolloutRecord

NODES = {"s1n01", "r1n01", "r2n01"}


@pytest.fixture
def provisioned(make_site):
    site = make_site(nodes=NODES, rollout={"timeouts": LOOP_TIMEOUTS})
    r1 = site.build()
    pipeline.promote(site.ctx, r1, "staging")
    pipeline.promote(site.ctx, r1, "production", force_gate=True)
    assert pipeline.apply(site.ctx, "production").status == "done"
    return site


def power_events(site, node, since: float) -> list[dict]:
    return [e for e in site.bmc_log(node) if e["at"] >= since and e["event"] in ("power", "activated")]


def test_plain_drift_changes_nothing_and_exits_2_listing_it_and_drift_fix_reprovisions(provisioned):
    site = provisioned
    site.lab.site.hand_flash("r2n01", "nic", "14.30.0")
    since = time.time()

    for args in (("drift",), ("drift", "production")):
        out = site.cli(*args)
        assert out.returncode == 2, out.stdout + out.stderr
        assert "r2n01 │ production │ nic       │ 14.30.0  │ 14.32.1" in out.stdout
        assert "left in place; `provisioner drift --fix` re-provisions these nodes" in out.stdout
    assert power_events(site, "r2n01", since) == []  # no power cycle, no flash: a report only
    assert site.firmware()["r2n01"]["nic"] == "14.30.0"
    assert site.cli("drift", "staging").returncode == 0

    fixed = site.cli("drift", "production", "--fix", "--yes", "--json")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert read_json(fixed.stdout)["fixed"]["production"]["done"] == ["r2n01"]
    assert site.firmware()["r2n01"]["nic"] == "14.32.1"
    assert site.cli("drift").returncode == 0


def test_a_drift_fix_that_halts_exits_8(provisioned):
    site = provisioned
    site.lab.site.hand_flash("r1n01", "raid", "52.20.9")
    site.lab.set_boot_loop("raid", "52.20.9")  # the flasher can never be netbooted
    out = site.cli("drift", "--fix", "--yes")
    assert out.returncode == 8, out.stdout + out.stderr
    assert "production: re-provisioned 0, failed 1 (halted)" in out.stdout
    assert "HALTED: " in out.stdout and "presumed boot-looping" in out.stdout


def test_apply_of_a_saved_plan_applies_exactly_it_and_refuses_once_the_bmcs_or_the_release_changed(provisioned,
                                                                                                 tmp_path):
    site = provisioned
    site.lab.site.hand_flash("r2n01", "nic", "14.30.0")
    saved = tmp_path / "prod.plan"
    made = site.cli("plan", "production", "-o", str(saved))
    assert made.returncode == 2, made.stdout + made.stderr
    doc = read_json(saved.read_text())
    assert (doc["release"], doc["environment"], doc["counts"]) == (
        site.ctx.store.current_release_id("production"), "production", {"nothing": 1, "reflash": 1})
    assert doc["observed"]["r2n01"]["nic"] == "14.30.0"

    # the BMC changed since the plan: refused, nothing done
    site.lab.site.hand_flash("r2n01", "nic", "14.31.0")
    since = time.time()
    stale = site.cli("apply", str(saved), "--yes")
    assert stale.returncode == 1, stale.stdout + stale.stderr
    assert stale.stderr.strip() == ("error: the saved plan no longer holds: r2n01: firmware changed since the plan "
                                    "(nic 14.30.0 → 14.31.0); make a new one with `provisioner plan production -o FILE`")
    assert power_events(site, "r2n01", since) == []

    # a fresh plan holds: applied as planned, one rollout of exactly its node
    assert site.cli("plan", "production", "-o", str(saved)).returncode == 2
    applied = site.cli("apply", str(saved), "--yes", "--json")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert read_json(applied.stdout)["done"] == ["r2n01"]
    rollout = RolloutRecord(site.ctx.store).rollouts("production")[-1]
    assert [(n.node, n.action) for n in RolloutRecord(site.ctx.store).nodes(rollout.id)] == [("r2n01", "reflash")]

    # another release since the plan: refused
    assert site.cli("plan", "production", "-o", str(saved)).returncode == 0
    spec2 = tmp_path / "spec2"
    subprocess.run(["cp", "-r", str(site.spec), str(spec2)], check=True)
    (spec2 / "boot_profiles.yaml").write_text((spec2 / "boot_profiles.yaml").read_text()
                                              .replace("console=ttyS0,115200n8 ip=dhcp", "console=ttyS1 ip=dhcp"))
    r2 = site.build(spec2)
    pipeline.promote(site.ctx, r2, "production", force_gate=True)
    moved = site.cli("apply", str(saved), "--yes")
    assert moved.returncode == 1, moved.stdout + moved.stderr
    assert f"production now points at release {r2[:12]}, the plan was made for" in moved.stderr


def test_a_protected_environment_asks_on_a_terminal_and_wants_yes_elsewhere(provisioned):
    site = provisioned
    site.lab.site.hand_flash("r2n01", "nic", "14.30.0")
    since = time.time()

    offline = site.cli("apply", "production")  # stdin is not a terminal here
    assert offline.returncode == 3, offline.stdout + offline.stderr
    assert offline.stderr.strip() == ("error: production is protected (policy.yaml): apply release "
                                      f"{site.ctx.store.current_release_id('production')[:12]} to production "
                                      "needs --yes when not run on a terminal")
    for args in (("rollback", "production"), ("drift", "production", "--fix")):
        refused = site.cli(*args)
        assert refused.returncode == 3 and "production is protected (policy.yaml)" in refused.stderr, refused.stderr

    # on a terminal: asked, and "n" changes nothing
    master, slave = pty.openpty()
    env = {**os.environ, "PROVISIONER_SPEC": str(site.spec), "PROVISIONER_DATA": str(site.data)}
    proc = subprocess.Popen([sys.executable, "-m", "provisioner", "apply", "production"], stdin=slave,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    os.close(slave)
    os.write(master, b"n\n")
    out, err = proc.communicate(timeout=120)
    os.close(master)
    assert proc.returncode == 1, out + err
    assert "to production: production is protected. Go ahead? [y/N]" in err
    assert "cancelled: nothing was changed" in err
    assert power_events(site, "r2n01", since) == []
    assert site.firmware()["r2n01"]["nic"] == "14.30.0"

    # staging is not protected: no question asked, off a terminal too
    assert site.cli("apply", "staging").returncode == 0
