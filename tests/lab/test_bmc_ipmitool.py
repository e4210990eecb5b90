"""Debian's ipmitool, which nobody here wrote, judges the simulated BMC: power, boot flags, mc info, HPM.1."""

from __future__ import annotations

import os
import re
import subprocess

import pytest
from helpers import need_tool

from provisioner.drivers.ipmi import IpmiDriver
from provisioner.lab.bmc import SIM_DEVICE_ID, SIM_PRODUCT_ID, SimSite
from provisioner.lab.bmc_process import generate_nodes
from provisioner.lab.hpm import build_hpm_image, build_sim_payload
from provisioner.lab.ipmi_oem import SIM_MANUFACTURER_ID
from provisioner.lab.loopback import free_block

FIRMWARE = {"bmc": "2.1.0", "bios": "1.20.0", "nic": "22.31.6", "raid": "52.26.0"}


@pytest.fixture
def bmc():
    need_tool("ipmitool")
    base, port = free_block(1)
    nodes = generate_nodes(1, base=base, port=port, firmware=FIRMWARE)
    nodes[0]["model"] = "r650"
    site = SimSite(nodes, activation_s=0.05).start()
    yield site, "sim0000", site.endpoints()["sim0000"]
    site.stop()


def ipmitool(ep, *args, password: str | None = None) -> subprocess.CompletedProcess:
    # -C 3: cipher suite 3 directly (research note N); -E: the password from IPMI_PASSWORD
    env = {**os.environ, "IPMI_PASSWORD": password or ep.password}
    return subprocess.run(["ipmitool", "-I", "lanplus", "-C", "3", "-H", ep.address, "-p", str(ep.port),
                           "-U", ep.username, "-E", *args], env=env, capture_output=True, text=True, timeout=60)


def ok(ep, *args) -> str:
    r = ipmitool(ep, *args)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout + r.stderr  # ipmitool prints its notices on stderr


def test_ipmitool_reads_and_changes_power(bmc):
    site, node, ep = bmc
    assert "Chassis Power is off" in ok(ep, "power", "status")
    ok(ep, "power", "on")
    assert "Chassis Power is on" in ok(ep, "power", "status")
    ok(ep, "power", "cycle")
    ok(ep, "power", "off")
    assert "Chassis Power is off" in ok(ep, "power", "status")
    assert site.state(node)["boots"] == 2


def test_ipmitool_sets_a_one_time_pxe_boot_that_our_driver_and_the_host_see(bmc):
    site, node, ep = bmc
    booted = []
    site.on_power_on = lambda name, device: booted.append((name, device))
    ok(ep, "chassis", "bootdev", "pxe")
    flags = ok(ep, "chassis", "bootparam", "get", "5")
    assert "Force PXE" in flags and "Options apply to only next boot" in flags
    assert IpmiDriver(ep).health()["boot_device"] == "pxe"
    ok(ep, "power", "on")
    site.stop()  # waits for the hook pool
    assert booted == [(node, "pxe")] and site.state(node)["boot_override"] is None


@pytest.mark.parametrize("mode, boot_type", [("uefi", "BIOS EFI boot"), ("bios", "BIOS PC Compatible (legacy) boot")])
def test_our_driver_asks_for_a_one_time_pxe_boot_in_the_nodes_boot_mode_as_ipmitool_reads_it(bmc, mode, boot_type):
    _, _, ep = bmc
    driver = IpmiDriver(ep)
    driver.set_one_time_boot("pxe", mode=mode)
    flags = ok(ep, "chassis", "bootparam", "get", "5")
    assert "Boot Flag Valid" in flags and "Options apply to only next boot" in flags  # not persistent
    assert boot_type in flags and "Boot Device Selector : Force PXE" in flags
    health = driver.health()
    assert (health["boot_device"], health["boot_mode"]) == ("pxe", mode)


def test_ipmitool_mc_info_shows_the_simulated_identity_and_bmc_version(bmc):
    _, _, ep = bmc
    info = ok(ep, "mc", "info")
    assert re.search(r"Firmware Revision\s+: 2\.01", info)
    assert re.search(r"Manufacturer ID\s+: 32473", info)
    assert re.search(r"Product ID\s+: 66 \(0x0042\)", info)


def test_ipmitool_hpm_check_lists_every_component_and_version(bmc):
    _, _, ep = bmc
    out = ok(ep, "hpm", "check")
    rows = dict(re.findall(r"\|\s+\d\|(\w+)\s*\|\s+([\d.]+ [0-9A-F]{8})", out))
    assert rows == {"BMC": "2.01 00000000", "BIOS": "1.20 00000000", "NIC": "22.31 00000006",
                    "RAID": "52.26 00000000"}


def test_ipmitool_hpm_upgrade_of_our_image_activates_the_new_versions(bmc, tmp_path):
    site, node, ep = bmc
    image = tmp_path / "fw.hpm"
    image.write_bytes(build_hpm_image(
        {"bmc": ("2.2.0", build_sim_payload("bmc", "2.2.0", "r650", 8192)),
         "nic": ("22.32.1", build_sim_payload("nic", "22.32.1", "r650", 3000))},
        SIM_DEVICE_ID, SIM_MANUFACTURER_ID, SIM_PRODUCT_ID))
    assert "Firmware upgrade procedure successful" in ok(ep, "hpm", "upgrade", str(image), "activate")
    rows = dict(re.findall(r"\|\s+\d\|(\w+)\s*\|\s+([\d.]+ [0-9A-F]{8})", ok(ep, "hpm", "check")))
    assert (rows["BMC"], rows["NIC"]) == ("2.02 00000000", "22.32 00000001")
    assert re.search(r"Firmware Revision\s+: 2\.02", ok(ep, "mc", "info"))
    assert IpmiDriver(ep).firmware_inventory() == {**FIRMWARE, "bmc": "2.2.0", "nic": "22.32.1"}
    activated = [(e["component"], e["version"]) for e in site.state(node)["log"] if e["event"] == "activated"]
    assert sorted(activated) == [("bmc", "2.2.0"), ("nic", "22.32.1")]


def test_ipmitool_refuses_an_hpm_image_for_another_product(bmc, tmp_path):
    site, node, ep = bmc
    image = tmp_path / "other.hpm"
    image.write_bytes(build_hpm_image({"bios": ("1.30.0", build_sim_payload("bios", "1.30.0", "r650"))},
                                      SIM_DEVICE_ID, SIM_MANUFACTURER_ID, SIM_PRODUCT_ID + 1))
    r = ipmitool(ep, "hpm", "upgrade", str(image), "activate")
    assert r.returncode != 0 and "Invalid image file for product" in r.stdout + r.stderr
    assert site.firmware(node) == FIRMWARE


def test_ipmitool_with_the_wrong_password_is_refused(bmc):
    _, _, ep = bmc
    r = ipmitool(ep, "power", "status", password="wrong")
    assert r.returncode != 0
