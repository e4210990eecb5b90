"""A bad BIOS flashed in band, then rolled back: the boot-looping node never netboots again, so it is
flashed out of band through its BMC (the manifest's `recovery: hpm`) and verified by a fresh read
and a boot check; without a recovery path it goes to `needs-hands` with the exact instruction."""

from __future__ import annotations

import time

import pytest
from pipeline_site import LOOP_TIMEOUTS, read_json

from provisioner import pipeline
from provisioner.demo import bump_bios
from provisioner.drivers import open_driver
from provisioner.errors import DriverError

NODES = {"s1n01", "s1n02", "s1n03"}  # two r650 (BIOS in band), one dl360g10 (BIOS over HPM.1)
R650 = ("s1n01", "s1n02")


def without_recovery(spec):
    manifest = spec / "firmware_manifests" / "r650.yaml"
    text = manifest.read_text()
    lines = [ln for ln in text.splitlines(keepends=True) if not ln.strip().startswith("recovery:")]
    assert len(lines) == len(text.splitlines()) - 1
    manifest.write_text("".join(lines))
    return spec


def boot_looping_canary(site, tmp_path):
    """R1 on staging, then R2 pinning r650 BIOS 1.14.0, which boot-loops: the canary takes it and halts."""
    r1 = site.build()
    pipeline.promote(site.ctx, r1, "staging")
    assert pipeline.apply(site.ctx, "staging").status == "done"
    spec2 = tmp_path / "spec-r650-bios-1.14.0"
    bump_bios(site.spec, spec2, model="r650", version="1.14.0")
    r2 = site.build(spec2)
    site.lab.set_boot_loop("bios", "1.14.0")
    ctx2 = site.context(spec2)
    pipeline.promote(ctx2, r2, "staging")
    halted = pipeline.apply(ctx2, "staging")
    assert halted.status == "halted"
    [canary] = halted.failed
    assert canary in R650 and "presumed boot-looping" in halted.failed[canary]
    assert site.firmware()[canary]["bios"] == "1.14.0"
    return r1, canary


def test_rolling_back_a_boot_looping_inband_bios_flashes_it_through_the_bmc_and_ends_at_the_pins(make_site,
                                                                                                  tmp_path):
    site = make_site(nodes=NODES, rollout={"timeouts": LOOP_TIMEOUTS})
    r1, canary = boot_looping_canary(site, tmp_path)
    # on call blocks the version first, as in the demo: the canary is re-marked held, still looping
    assert pipeline.block(site.ctx, "bios", "1.14.0", "boot loop after an in-band flash")["marked"] == [canary]
    assert site.ctx.store.node(canary).state == "held"
    since = time.time()

    back = site.cli("rollback", "staging")

    assert back.returncode == 0, back.stdout + back.stderr
    assert "1 re-provisioned, 0 failed" in back.stdout
    pins = {c.name: c.version for c in site.ctx.spec.manifests["r650"].components}
    for node in NODES:
        model = site.ctx.spec.node(node).model
        assert site.firmware()[node] == {c.name: c.version for c in site.ctx.spec.manifests[model].components}, node
    assert site.firmware()[canary]["bios"] == pins["bios"] == "1.13.2"
    # through the BMC (HPM.1 upload, activation) with the host off, then seen to boot on it
    log = [e for e in site.bmc_log(canary) if e["at"] >= since and e["event"] != "boot_override"]
    assert [e["event"] for e in log][:5] == ["power", "upload_started", "uploaded", "activated", "power"], log
    assert (log[0]["power"], log[3]["component"], log[3]["version"]) == ("off", "bios", "1.13.2")
    assert not [e for e in log if e["event"] == "inband_flash"]
    callbacks = [e["event"] for e in site.ctx.store.node_events(canary) if e["source"] == "callback"]
    assert callbacks[-1] == "booted"
    assert site.ctx.store.node(canary).state == "active"
    assert all(r["compliant"] for r in pipeline.compliance(site.ctx, ["staging"]))
    assert {r["node_release"] for r in pipeline.compliance(site.ctx, ["staging"])} == {r1}


def test_without_a_recovery_path_the_node_needs_hands_with_the_component_image_and_bmc(make_site, tmp_path):
    site = make_site(nodes=NODES, rollout={"timeouts": LOOP_TIMEOUTS})
    without_recovery(site.spec)
    site.stop()
    site.ctx = site.context()  # read the edited spec
    site.start_lab()  # the lab's BMCs as the manifest now describes them: r650 BIOS only in band
    ep = pipeline.endpoints(site.ctx)["s1n01"]
    with open_driver(ep) as d:
        assert not d.supports_oob_flash("bios") and d.supports_oob_flash("bmc")
    _, canary = boot_looping_canary(site, tmp_path)
    since = time.time()

    back = site.cli("rollback", "staging", "--json")

    assert back.returncode == 8, back.stdout + back.stderr
    bmc = pipeline.endpoints(site.ctx)[canary].key
    bios = next(c for c in site.ctx.spec.manifests["r650"].components if c.name == "bios")
    instruction = (f"needs hands: {canary} cannot netboot (boot check: no report within 4s after power-on; presumed "
                   f"boot-looping) and the r650 manifest names no recovery path for bios; flash bios 1.13.2 from "
                   f"artifacts/firmware/r650/bios-1.13.2.bin (sha256 {bios.image.sha256}) through the BMC at {bmc} "
                   f"or at the console, then `provisioner node clear {canary} --reason ...` and apply again")
    result = read_json(back.stdout)
    assert (result["status"], result["failed"], result["done"]) == ("halted", {canary: instruction}, [])
    assert f"✗ {canary}: needs hands: {canary} cannot netboot" in back.stderr  # the progress, for people
    node = site.ctx.store.node(canary)
    assert (node.state, node.state_reason) == ("needs-hands", instruction)
    # nothing was tried on it: no power cycle into a PXE boot it cannot reach, no flash
    assert [e["event"] for e in site.bmc_log(canary) if e["at"] >= since and e["event"] != "boot_override"] == []
    assert site.firmware()[canary]["bios"] == "1.14.0"


@pytest.mark.parametrize("component, can", [("bios", True), ("bmc", True), ("nic", False), ("raid", False)])
def test_the_lab_bmc_flashes_over_hpm_only_what_the_manifest_says_it_can(lab_site, component, can):
    ep = pipeline.endpoints(lab_site.ctx)["s1n01"]  # r650: bmc over HPM.1, BIOS as its recovery path
    pin = next(c for c in lab_site.ctx.spec.manifests["r650"].components if c.name == component)
    image = (lab_site.spec / pin.image.file).read_bytes()
    with open_driver(ep) as d:
        assert d.supports_oob_flash(component) is can
        if can:
            d.flash(component, image, pin.image.sha256, pin.version)
        else:  # as real hardware: the BMC does not offer it, whatever the client tries
            with pytest.raises(DriverError):
                d.flash(component, image, pin.image.sha256, pin.version)
    assert [e["event"] for e in lab_site.bmc_log("s1n01") if e["event"] in ("uploaded", "activated")] == (
        ["uploaded", "activated"] if can else [])


def test_a_recovery_flash_is_a_fenced_write_first_and_a_holder_that_lost_the_node_flashes_nothing(make_site,
                                                                                                    tmp_path):
    """As every flash: the recovery's node event goes through the rollout's fenced write before the
    BMC is touched. Here the fence finds the node's lease gone (taken over by another holder while
    this one was stalled): the rollback stops with LeaseLost and the looping node is not flashed."""
    from provisioner.errors import LeaseLost

    site = make_site(nodes=NODES, rollout={"timeouts": LOOP_TIMEOUTS})
    _, canary = boot_looping_canary(site, tmp_path)
    pipeline.block(site.ctx, "bios", "1.14.0", "boot loop after an in-band flash")
    since = time.time()

    def lose_the_node_at_recovery(engine, rid):
        fenced = engine.record.node_write

        def node_write(node, **kw):
            if (kw.get("event") or (None, None))[1] == "recovery_flash":
                raise LeaseLost(f"the lease on node {node} was taken over by another holder")
            return fenced(node, **kw)

        engine.record.node_write = node_write

    with pytest.raises(LeaseLost):
        pipeline.rollback(site.ctx, "staging", on_engine=lose_the_node_at_recovery)
    assert site.firmware()[canary]["bios"] == "1.14.0"
    touched = [e["event"] for e in site.bmc_log(canary) if e["at"] >= since and e["event"] != "boot_override"]
    assert not {"power", "upload_started", "activated"} & set(touched), touched
