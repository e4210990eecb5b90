"""The IPMI driver against simulated BMCs: error mapping, faults, HPM.1 details, one operation per BMC."""

from __future__ import annotations

import hashlib
import threading
import time

import bmc_harness
import pytest
from bmc_harness import FIRMWARE, MODEL

from provisioner.drivers import get_driver, open_driver
from provisioner.drivers.base import BmcEndpoint
from provisioner.drivers.ipmi import IpmiDriver
from provisioner.drivers.ipmi_wire import parse_device_id
from provisioner.errors import BmcAuthError, BmcBusy, BmcTimeout, BmcUnreachable, ImageRejected
from provisioner.lab.hpm import build_sim_payload

sim_site = bmc_harness.sim_site  # fixture


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def one(sim_site, **options):
    site = sim_site(1, **options)
    return site, "sim0000", site.endpoints()["sim0000"]


def test_the_registry_finds_the_ipmi_driver_by_name():
    assert get_driver("ipmi") is IpmiDriver


def test_wrong_password_is_an_auth_error_within_a_second(sim_site):
    _, _, ep = one(sim_site)
    bad = BmcEndpoint(ep.address, ep.port, ep.username, "not-the-password")
    started = time.monotonic()
    with pytest.raises(BmcAuthError, match="credentials refused"):
        IpmiDriver(bad, timeout=5, retries=2).power_status()
    assert time.monotonic() - started < 1.0


def test_unknown_user_is_an_auth_error_not_a_timeout(sim_site):
    _, _, ep = one(sim_site)
    started = time.monotonic()
    with pytest.raises(BmcAuthError):
        IpmiDriver(BmcEndpoint(ep.address, ep.port, "nobody", "x"), timeout=5).power_status()
    assert time.monotonic() - started < 1.0


def test_an_unreachable_bmc_fails_within_the_timeout_whatever_the_retries(sim_site):
    site, node, ep = one(sim_site)
    site.set_fault(node, unreachable=True)
    started = time.monotonic()
    with pytest.raises(BmcUnreachable, match="no answer"):
        IpmiDriver(ep, timeout=1.5, retries=3).power_status()
    assert time.monotonic() - started < 1.5 + 0.3


def test_nothing_listening_at_the_address_is_unreachable():
    with pytest.raises(BmcUnreachable):
        IpmiDriver(BmcEndpoint("127.254.254.254", 623, "admin", "password"), timeout=1.0).power_on()


def test_a_bmc_that_stops_answering_mid_session_is_unreachable(sim_site):
    site, node, ep = one(sim_site)
    driver = IpmiDriver(ep, timeout=1.0, retries=0)
    assert driver.power_status() == "off"  # logged in
    site.set_fault(node, unreachable=True)
    with pytest.raises(BmcUnreachable):
        driver.power_status()
    site.clear_faults(node)
    assert driver.power_status() == "off"  # and the driver recovers with a new session


def test_a_slow_bmc_is_only_slow(sim_site):
    site, node, ep = one(sim_site)
    site.set_fault(node, delay_s=0.2)
    driver = IpmiDriver(ep, timeout=5)
    started = time.monotonic()
    driver.power_on()
    assert driver.power_status() == "on"
    assert time.monotonic() - started >= 0.2 * 8  # login (6 round trips) and two commands


def test_packet_loss_is_absorbed_by_retransmission_without_double_power_cycles(sim_site):
    site, node, ep = one(sim_site, seed=5)
    driver = IpmiDriver(ep, timeout=30)
    driver.power_on()
    site.set_fault(node, loss=0.1)
    for _ in range(3):
        driver.power_cycle()
    site.clear_faults(node)
    assert site.state(node)["boots"] == 4  # one power on and exactly three cycles


def test_power_lost_mid_flash_leaves_the_old_version_and_a_retryable_error(sim_site):
    site, node, ep = one(sim_site)
    image = build_sim_payload("bios", "1.21.0", MODEL, size=40_000)
    site.set_fault(node, power_loss_at_block=10, outage_s=0.3)
    driver = IpmiDriver(ep, timeout=1.5, block_size=1024)
    with pytest.raises(BmcTimeout, match="no progress") as e:
        driver.flash("bios", image, sha(image), "1.21.0")
    assert e.value.retryable and e.value.job.state == "failed" and 0 < e.value.job.bytes_sent < 40_000
    log = site.state(node)["log"]
    aborted = [x for x in log if x["event"] == "flash_aborted"]
    assert aborted and aborted[0]["components"] == ["bios"] and aborted[0]["blocks"] == 10
    assert driver.firmware_inventory()["bios"] == "1.20.0"
    driver.flash("bios", image, sha(image), "1.21.0")  # flashing again starts over and succeeds
    assert driver.firmware_inventory()["bios"] == "1.21.0"


def test_a_bmc_that_refuses_the_image_for_its_model_is_image_rejected(sim_site):
    site, node, ep = one(sim_site)
    image = build_sim_payload("bios", "2.90.0", "dl360g10")
    with pytest.raises(ImageRejected, match="refused"):
        IpmiDriver(ep).flash("bios", image, sha(image), "2.90.0")
    assert [x["reason"] for x in site.state(node)["log"] if x["event"] == "rejected"] == [
        "image is for model 'dl360g10', this is 'r650'"]


def test_upload_blocks_shrink_to_what_the_bmc_accepts(sim_site):
    site, node, ep = one(sim_site, max_block=100)
    image = build_sim_payload("nic", "22.40.0", MODEL, size=3000)
    job = IpmiDriver(ep, block_size=1024).flash("nic", image, sha(image), "22.40.0")
    assert job.block_size == 64 and job.blocks == 47
    assert site.firmware(node)["nic"] == "22.40.0"


def test_a_bmc_without_the_lab_oem_commands_is_read_through_hpm(sim_site):
    site, node, ep = one(sim_site)
    for bmc in site.bmcs.values():
        bmc.mfgid = 0x0002A2  # another vendor: the driver must not send it lab OEM commands
    versions = IpmiDriver(ep).firmware_inventory()
    # HPM.1 versions are 6 bytes: exact for X.Y.Z, but "7.00.60" has no exact encoding
    assert versions == {**FIRMWARE, "raid": "7.0.60"}


def test_one_operation_at_a_time_per_bmc_even_across_driver_objects(sim_site):
    site, node, ep = one(sim_site, max_block=64)
    image = build_sim_payload("bios", "1.21.0", MODEL, size=8_000)
    site.set_fault(node, delay_s=0.004)  # at least half a second for the 125 blocks
    flasher = IpmiDriver(ep, timeout=5)
    started = threading.Event()
    result = {}

    def flash():
        result["job"] = flasher.flash("bios", image, sha(image), "1.21.0",
                                      progress=lambda job: started.set())

    t = threading.Thread(target=flash)
    t.start()
    assert started.wait(5)
    with pytest.raises(BmcBusy, match="another operation"):
        IpmiDriver(ep, timeout=0.3).power_status()
    t.join(30)
    assert result["job"].state == "active"
    assert IpmiDriver(ep).power_status() == "off"


def test_get_device_id_is_parsed_per_the_spec():
    ident = parse_device_id(bytes([0x20, 0x01, 0x09, 0x08, 0x02, 0x9F, 0x91, 0x12, 0x00, 0x02, 0x0F,
                                   0, 0, 0, 5]))
    assert (ident.firmware_revision, ident.version, ident.manufacturer_id, ident.product_id,
            ident.ipmi_version) == ("9.08", "9.8.5", 0x1291, 0x0F02, "2.0")


def test_drivers_for_many_bmcs_share_no_state(sim_site):
    site = sim_site(3)
    eps = site.endpoints()
    for i, (_name, ep) in enumerate(sorted(eps.items())):
        d = open_driver(ep)
        if i % 2:
            d.power_on()
        d.close()
    assert [site.state(n)["power"] for n in sorted(eps)] == ["off", "on", "off"]


def test_an_abandoned_call_ends_its_pyghmi_session_at_once(sim_site):
    # Left to time out by itself, a session to a dead BMC ran its retries and logout from other
    # threads' event loops, stalling their logins for 5-12 s (see _drop_session).
    import pyghmi.ipmi.private.session as pyghmi_session

    site, node, ep = one(sim_site)
    driver = IpmiDriver(ep, timeout=0.5, retries=0)
    driver.power_status()
    session = driver._cmd.ipmi_session
    site.set_fault(node, unreachable=True)
    with pytest.raises(BmcUnreachable):
        driver.power_status()
    assert session.broken and not session.logged
    assert session not in pyghmi_session.Session.waiting_sessions
    assert session not in pyghmi_session.Session.keepalive_sessions


def test_a_session_idle_too_long_is_replaced_by_a_fresh_login(sim_site, monkeypatch):
    from provisioner.drivers import ipmi

    _, _, ep = one(sim_site)
    driver = IpmiDriver(ep)
    driver.power_status()
    first = driver._cmd.ipmi_session
    monkeypatch.setattr(ipmi, "SESSION_IDLE_S", 0.0)
    assert driver.power_status() == "off"
    assert driver._cmd.ipmi_session is not first and first.broken


def test_a_bmc_that_took_cipher_suite_3_is_offered_it_first_at_the_next_login(sim_site, monkeypatch):
    """Fix T: the first login proposes SHA-256 (suite 17), is refused by a suite-3-only BMC and
    falls back; the next logins to that BMC propose SHA-1 at once (one round trip less); a failed
    login forgets it."""
    from provisioner.drivers import pyghmi_fixes
    from provisioner.lab import ipmi_server

    site, node, ep = one(sim_site)
    proposals = []
    original = ipmi_server.SimSession.create_open_session_response

    def record(self, request):
        proposals.append(request[12] if len(request) >= 32 else None)  # the authentication algorithm
        return original(self, request)

    monkeypatch.setattr(ipmi_server.SimSession, "create_open_session_response", record)
    pyghmi_fixes.forget_cipher(ep.address, ep.port)
    for _ in range(2):
        d = IpmiDriver(ep, timeout=5)
        assert d.power_status() in ("on", "off")
        d.close()
    assert proposals == [3, 1, 1]  # RAKP-HMAC-SHA256 refused, SHA1; then SHA1 straight away
    site.set_fault(node, wrong_password=True)
    with pytest.raises(BmcAuthError):
        IpmiDriver(ep, timeout=5, retries=0).power_status()
    site.set_fault(node, wrong_password=False)
    del proposals[:]
    d = IpmiDriver(ep, timeout=5)
    assert d.power_status() in ("on", "off")
    d.close()
    assert proposals == [3, 1]  # forgotten after the failed login: SHA-256 first again
