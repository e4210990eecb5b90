"""The BMC driver contract, run against every driver: the in-memory fake, and IPMI and Redfish on simulated BMCs."""

from __future__ import annotations

import hashlib
import inspect
import time

import bmc_harness
import pytest
from bmc_harness import FIRMWARE, MODEL

from provisioner.drivers import driver_names, get_driver
from provisioner.drivers.base import BOOT_MODES, FlashJob
from provisioner.errors import BmcAuthError, BmcTimeout, BmcUnreachable, ImageRejected, Unsupported
from provisioner.lab.bmc import SIM_DEVICE_ID, SIM_PRODUCT_ID
from provisioner.lab.hpm import build_hpm_image, build_sim_payload
from provisioner.lab.ipmi_oem import SIM_MANUFACTURER_ID

sim_site, redfish_site, harness = bmc_harness.sim_site, bmc_harness.redfish_site, bmc_harness.harness  # fixtures


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_power_on_then_status_reports_on(harness):
    assert harness.driver.power_status() == "off"
    harness.driver.power_on()
    assert harness.driver.power_status() == "on"
    assert harness.inspect()["power"] == "on"


def test_power_on_of_a_running_server_does_not_reboot_it(harness):
    harness.driver.power_on()
    harness.driver.power_on()
    assert harness.inspect()["boots"] == 1


def test_power_off_turns_the_server_off(harness):
    harness.driver.power_on()
    harness.driver.power_off()
    assert harness.driver.power_status() == "off"


def test_power_cycle_of_a_server_that_is_off_powers_it_on(harness):
    harness.driver.power_cycle()
    assert harness.driver.power_status() == "on"
    assert harness.inspect()["boots"] == 1


def test_power_cycle_of_a_running_server_reboots_it_exactly_once(harness):
    harness.driver.power_on()
    harness.driver.power_cycle()
    seen = harness.inspect()
    assert (seen["power"], seen["boots"]) == ("on", 2)


def test_one_time_pxe_boot_applies_to_the_next_boot_only(harness):
    harness.driver.set_one_time_boot("pxe", mode="uefi")
    assert harness.inspect()["boot_override"] == "pxe"
    harness.driver.power_cycle()
    assert harness.inspect()["last_boot_device"] == "pxe"
    harness.driver.power_cycle()
    seen = harness.inspect()
    assert (seen["last_boot_device"], seen["boot_override"]) == ("disk", None)


def test_health_shows_power_and_the_pending_boot_device_and_mode(harness):
    harness.driver.set_one_time_boot("pxe", mode="bios")
    h = harness.driver.health()
    assert h["ok"] and h["power"] == "off" and (h["boot_device"], h["boot_mode"]) == ("pxe", "bios")


@pytest.mark.parametrize("mode", BOOT_MODES)
def test_one_time_boot_reaches_the_bmc_in_the_nodes_boot_mode(harness, mode):
    harness.driver.set_one_time_boot("pxe", mode=mode)
    seen = harness.inspect()
    assert (seen["boot_override"], seen["boot_mode"]) == ("pxe", mode)


def test_an_unknown_boot_device_is_unsupported(harness):
    with pytest.raises(Unsupported):
        harness.driver.set_one_time_boot("usb-stick", mode="uefi")


def test_an_unknown_boot_mode_is_unsupported_and_nothing_reaches_the_bmc(harness):
    with pytest.raises(Unsupported, match="boot mode 'efi'"):
        harness.driver.set_one_time_boot("pxe", mode="efi")
    assert harness.inspect()["boot_override"] is None


@pytest.mark.parametrize("name", driver_names())
def test_every_registered_driver_takes_the_boot_mode_as_a_required_keyword(name):
    mode = inspect.signature(get_driver(name).set_one_time_boot).parameters.get("mode")
    assert mode is not None and mode.kind is inspect.Parameter.KEYWORD_ONLY and mode.default is mode.empty


def test_inventory_lists_every_component_with_its_exact_version(harness):
    assert harness.driver.firmware_inventory() == FIRMWARE


def test_inventory_is_read_fresh_from_the_bmc_every_time(harness):
    harness.driver.firmware_inventory()
    harness.hand_flash("bios", "1.19.9")
    assert harness.driver.firmware_inventory()["bios"] == "1.19.9"


def test_every_component_can_be_flashed_out_of_band(harness):
    assert all(harness.driver.supports_oob_flash(c) for c in FIRMWARE)
    assert not harness.driver.supports_oob_flash("gpu")


def test_flash_installs_the_version_and_verifies_it(harness):
    image = build_sim_payload("bios", "1.21.0", MODEL, size=6000)
    job = harness.driver.flash("bios", image, sha(image), "1.21.0")
    assert isinstance(job, FlashJob)
    assert (job.state, job.previous_version, job.version) == ("active", "1.20.0", "1.21.0")
    assert job.as_dict()["state"] == "active" and job.as_dict()["seconds"] >= 0
    assert harness.inspect()["firmware"]["bios"] == "1.21.0"
    assert harness.driver.firmware_inventory()["bios"] == "1.21.0"


def test_flash_of_an_hpm_image_installs_the_component_it_names(harness):
    image = build_hpm_image({"nic": ("22.40.0", build_sim_payload("nic", "22.40.0", MODEL, 3000)),
                             "bios": ("1.30.0", build_sim_payload("bios", "1.30.0", MODEL, 3000))},
                            SIM_DEVICE_ID, SIM_MANUFACTURER_ID, SIM_PRODUCT_ID)
    harness.driver.flash("nic", image, sha(image), "22.40.0")
    assert harness.inspect()["firmware"] == {**FIRMWARE, "nic": "22.40.0"}


def test_flash_reports_progress_until_active(harness):
    image = build_sim_payload("raid", "52.26.0", MODEL, size=5000)
    states = []
    harness.driver.flash("raid", image, sha(image), "52.26.0", progress=lambda job: states.append(job.state))
    assert states[-1] == "active" and "uploading" in states and "activating" in states


def test_flash_refuses_an_image_whose_digest_differs_before_sending_a_byte(harness):
    image = build_sim_payload("bios", "1.21.0", MODEL)
    with pytest.raises(ImageRejected, match="sha256"):
        harness.driver.flash("bios", image, sha(image + b"tampered"), "1.21.0")
    seen = harness.inspect()
    assert seen["uploads"] == [] and seen["firmware"]["bios"] == "1.20.0"


def test_flash_whose_bmc_then_reports_another_version_is_rejected(harness):
    image = build_sim_payload("bios", "9.9.9", MODEL)  # the image says 9.9.9, the release 1.21.0
    with pytest.raises(ImageRejected, match="9.9.9"):
        harness.driver.flash("bios", image, sha(image), "1.21.0")


def test_flash_of_an_image_for_another_component_is_rejected(harness):
    image = build_sim_payload("nic", "22.40.0", MODEL)
    with pytest.raises(ImageRejected):
        harness.driver.flash("bios", image, sha(image), "22.40.0")
    assert harness.inspect()["firmware"]["bios"] == "1.20.0"


def test_a_bmc_that_loses_power_mid_upload_is_retryable_keeps_the_old_version_and_carries_the_failed_job(harness):
    image = build_sim_payload("bios", "1.21.0", MODEL, size=8000)
    harness.lose_power_during_next_upload()
    driver = harness.open(timeout=1.5, block_size=1024)
    with pytest.raises((BmcUnreachable, BmcTimeout)) as e:
        driver.flash("bios", image, sha(image), "1.21.0")
    assert e.value.retryable and isinstance(e.value.job, FlashJob) and e.value.job.state == "failed"
    assert e.value.job.previous_version == "1.20.0" and harness.inspect()["firmware"]["bios"] == "1.20.0"
    time.sleep(0.4)  # the BMC's outage after power loss
    assert driver.flash("bios", image, sha(image), "1.21.0").state == "active"  # again, from the start


def test_refused_credentials_are_a_fatal_auth_error(harness):
    harness.reject_password()
    started = time.monotonic()
    with pytest.raises(BmcAuthError) as e:
        harness.open(retries=2).power_status()
    assert not e.value.retryable and time.monotonic() - started < 2.0


def test_an_unreachable_bmc_is_a_retryable_unreachable_error(harness):
    harness.make_unreachable()
    driver = harness.open(timeout=1.0, retries=1)
    with pytest.raises(BmcUnreachable) as e:
        driver.power_status()
    assert e.value.retryable


def test_health_reports_an_unreachable_bmc_instead_of_raising(harness):
    harness.make_unreachable()
    h = harness.open(timeout=1.0, retries=0).health()
    assert not h["ok"] and h["error"].startswith("BmcUnreachable") and h["retryable"]


def test_a_closed_driver_logs_in_again_on_next_use(harness):
    harness.driver.power_on()
    harness.driver.close()
    assert harness.driver.power_status() == "on"
