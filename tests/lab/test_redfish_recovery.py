"""Out-of-band recovery over Redfish: a dl360g10 whose BIOS (flashed in band) boot-loops cannot
netboot, so its Redfish BMC is handed the pinned BIOS instead; afterwards the server netboots again.

Everything the operator's spec says is used as is: the node's driver options come from
pipeline.endpoints (the lab's CA, the manifest's SoftwareIds, the node's image_server), and the BMC
pulls the image from the lab's own boot server, by sha256.
"""

from __future__ import annotations

import socket
import time

import yaml
from helpers import copy_spec

from provisioner import pipeline
from provisioner.context import Context, Settings
from provisioner.drivers import open_driver
from provisioner.lab.loopback import _free
from provisioner.lab.site import Lab
from provisioner.releases.build import freeze, import_artifacts

NODE = "r2n01"
BAD_BIOS = "2.90.0"


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_node_spec(tmp_path, http_port: int):
    spec = copy_spec(tmp_path / "spec")
    inv_file = spec / "inventory.yaml"
    inv = yaml.safe_load(inv_file.read_text())
    octet = next(n for n in range(60, 250) if _free(f"127.{n}.12.1", 6230))
    for rack in inv["racks"]:
        rack["nodes"] = [n for n in rack["nodes"] if n["name"] == NODE]
    inv["racks"] = [r for r in inv["racks"] if r["nodes"]]
    bmc = inv["racks"][0]["nodes"][0]["bmc"]
    bmc["address"] = bmc["address"].replace("127.0.", f"127.{octet}.")
    bmc["image_server"] = f"http://127.0.0.1:{http_port}"  # where this BMC reaches our boot server
    inv_file.write_text(yaml.safe_dump(inv, sort_keys=False))
    return spec


def journal(lab, since: float = 0.0) -> list[str]:
    return [j["event"] for j in lab.host.journal if j["node"] == NODE and j["at"] >= since]


def wait_for(lab, event: str, since: float, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while event not in journal(lab, since):
        assert time.monotonic() < deadline, f"no {event!r} in {journal(lab, since)}"
        time.sleep(0.05)


def test_a_boot_looping_bios_is_flashed_back_over_redfish_and_the_server_netboots_again(tmp_path):
    port = free_tcp_port()
    spec = one_node_spec(tmp_path, port)
    ctx = Context(Settings(spec_dir=spec, data_dir=tmp_path / "data", actor="alice"))
    release = freeze(ctx.spec)
    import_artifacts(spec, release, ctx.artifacts)  # the pinned images, in our content-addressed store
    pin = next(c for c in ctx.spec.manifests["dl360g10"].components if c.name == "bios")

    lab = Lab(ctx, http_bind=f"127.0.0.1:{port}").start()
    try:
        assert lab.site.driver_of(NODE) == "redfish"
        lab.set_boot_loop("bios", BAD_BIOS)
        lab.site.set_firmware(NODE, "bios", BAD_BIOS)  # what a bad in-band flash left behind
        with open_driver(pipeline.endpoints(ctx)[NODE]) as driver:
            started = time.time()
            driver.set_one_time_boot("pxe", mode="uefi")
            driver.power_cycle()
            wait_for(lab, "boot_loop", started)
            assert "pxe" not in journal(lab, started)  # it never reaches its PXE firmware

            job = driver.flash("bios", ctx.artifacts.read(pin.image.sha256), pin.image.sha256, pin.version)
            assert (job.state, job.previous_version, job.version) == ("active", BAD_BIOS, pin.version)
            assert driver.firmware_inventory()["bios"] == pin.version

            recovered = time.time()
            driver.set_one_time_boot("pxe", mode="uefi")
            driver.power_cycle()
            wait_for(lab, "pxe", recovered)
        bmc_log = lab.site.state(NODE)["log"]
        pulled = [e for e in bmc_log if e["event"] == "upload_started"]
        assert pulled[-1]["how"] == "simple_update"
        assert pulled[-1]["image_uri"] == f"http://127.0.0.1:{port}/artifacts/sha256/{pin.image.sha256}"
        assert [e for e in bmc_log if e["event"] == "activated" and e["version"] == pin.version]
        assert "boot_loop" not in journal(lab, recovered)
    finally:
        lab.stop()
