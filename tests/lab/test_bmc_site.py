"""The simulated site: persistence, hooks, outside changes, scale past select(), a site in its own process."""

from __future__ import annotations

import json
import socket
import threading

import pytest

from provisioner.drivers.ipmi import IpmiDriver
from provisioner.errors import BmcUnreachable
from provisioner.lab.bmc import SimSite
from provisioner.lab.bmc_process import SiteProcess, generate_nodes
from provisioner.lab.loopback import free_block

FIRMWARE = {"bmc": "2.1.0", "bios": "1.20.0", "nic": "22.31.6", "raid": "52.26.0"}


def nodes(count: int = 1) -> list[dict]:
    base, port = free_block(count)
    return generate_nodes(count, base=base, port=port, firmware=FIRMWARE)


@pytest.fixture
def running():
    sites = []

    def start(node_list, **options):
        site = SimSite(node_list, **options).start()
        sites.append(site)
        return site

    yield start
    for s in sites:
        s.stop()


def test_power_boot_override_and_firmware_survive_a_restart(running, tmp_path):
    state = tmp_path / "bmc-state.json"
    ns = nodes(1)
    site = running(ns, state_path=state)
    d = IpmiDriver(site.endpoints()["sim0000"])
    d.power_on()
    d.set_one_time_boot("pxe", mode="bios")
    site.hand_flash("sim0000", "bios", "1.19.0")
    d.close()
    site.stop()
    ns[0]["firmware"] = {"bmc": "9.9.9"}  # the node list no longer decides: the saved state does
    again = running(ns, state_path=state)
    st = again.state("sim0000")
    assert st["power"] == "on" and st["boot_override"]["device"] == "pxe"
    assert IpmiDriver(again.endpoints()["sim0000"]).firmware_inventory() == {**FIRMWARE, "bios": "1.19.0"}


def test_the_state_file_is_plain_json_replaced_whole(running, tmp_path):
    state = tmp_path / "bmc-state.json"
    site = running(nodes(2), state_path=state)
    IpmiDriver(site.endpoints()["sim0001"]).power_on()
    site.stop()
    doc = json.loads(state.read_text())
    assert doc["format"] == 1 and doc["nodes"]["sim0001"]["power"] == "on"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bmc-state.json"]  # no temporary left behind


def test_power_on_hook_runs_on_a_worker_thread_with_the_boot_device(running):
    calls, done = [], threading.Event()

    def on_power_on(node, device):
        calls.append((node, device, threading.current_thread().name))
        done.set()

    site = running(nodes(1), on_power_on=on_power_on)
    d = IpmiDriver(site.endpoints()["sim0000"])
    d.set_one_time_boot("pxe", mode="bios")
    d.power_cycle()
    assert done.wait(5)
    node, device, thread = calls[0]
    assert (node, device) == ("sim0000", "pxe") and thread.startswith("sim-hook")


def test_outside_firmware_changes_are_seen_over_ipmi_and_logged(running):
    site = running(nodes(1))
    site.set_firmware("sim0000", "nic", "22.40.0")
    site.hand_flash("sim0000", "raid", "52.10.0")
    assert IpmiDriver(site.endpoints()["sim0000"]).firmware_inventory() == {
        **FIRMWARE, "nic": "22.40.0", "raid": "52.10.0"}
    events = [(e["event"], e["component"]) for e in site.state("sim0000")["log"] if "component" in e]
    assert events == [("inband_flash", "nic"), ("hand_flash", "raid")]


def test_one_site_serves_more_bmcs_than_select_could_watch(running):
    # select() stops at fd 1024 (research note, fix H). The site waits with epoll, and pyghmi's
    # client in this same process now gets sockets above 1024 too (client-side fix H).
    site = running(nodes(1100))
    eps = site.endpoints()
    for name in ("sim0000", "sim1099"):
        assert IpmiDriver(eps[name]).power_status() == "off"


def test_an_address_already_in_use_is_named_in_the_error(running):
    ns = nodes(2)
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind((ns[1]["bmc_address"], ns[1]["bmc_port"]))
    try:
        with pytest.raises(OSError, match=f"BMC sim0001: cannot bind {ns[1]['bmc_address']}"):
            running(ns)
    finally:
        taken.close()


def test_an_unknown_fault_is_refused(running):
    site = running(nodes(1))
    with pytest.raises(ValueError, match="unknown fault"):
        site.set_fault("sim0000", on_fire=True)


def test_an_unknown_firmware_component_in_a_node_is_refused():
    ns = nodes(1)
    ns[0]["firmware"]["gpu"] = "1.0"
    with pytest.raises(ValueError, match="gpu"):
        SimSite(ns)


def test_a_site_in_its_own_process_answers_takes_faults_and_reports_boots(tmp_path):
    boots = []
    proc = SiteProcess(nodes(3), state_path=tmp_path / "bmc-state.json",
                       on_power_on=lambda node, device: boots.append((node, device)))
    with proc:
        eps = {n["name"]: n for n in proc.nodes}
        from provisioner.drivers.base import BmcEndpoint

        ep = BmcEndpoint(eps["sim0002"]["bmc_address"], eps["sim0002"]["bmc_port"], "admin", "password")
        d = IpmiDriver(ep, timeout=2)
        d.set_one_time_boot("pxe", mode="bios")
        d.power_on()
        proc.hand_flash("sim0002", "bios", "1.0.1")
        assert d.firmware_inventory()["bios"] == "1.0.1"
        proc.set_fault("sim0002", unreachable=True)
        with pytest.raises(BmcUnreachable):
            IpmiDriver(ep, timeout=1, retries=0).power_off()
        proc.clear_faults("sim0002")
        assert proc.state("sim0002")["power"] == "on"
    assert boots == [("sim0002", "pxe")]
    saved = json.loads((tmp_path / "bmc-state.json").read_text())
    assert saved["nodes"]["sim0002"]["firmware"]["bios"]["active"] == "1.0.1"


def test_losing_power_darkens_the_bmc_for_its_outage_then_it_answers_with_the_host_off(running):
    site = running(nodes(1))
    ep = site.endpoints()["sim0000"]
    IpmiDriver(ep).power_on()
    site.set_fault("sim0000", outage_s=1.0)
    site.lose_power("sim0000")
    with pytest.raises(BmcUnreachable):
        IpmiDriver(ep, timeout=0.5, retries=0).power_status()
    assert IpmiDriver(ep, timeout=5).power_status() == "off"
    assert [e["reason"] for e in site.state("sim0000")["log"] if e["event"] == "bmc_reboot"] == ["power lost"]
