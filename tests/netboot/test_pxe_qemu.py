"""Real PXE boots: qemu (TCG) firmware boots over a bridge in a network namespace from real dnsmasq
running OUR rendered configuration and OUR `provisioner serve` (TFTP + HTTP), and the boot service
records what the netboot gate handed the node and the callback the node made with its token.

    qemu firmware --DHCP--> dnsmasq (provisioner dhcp render) --> iPXE --HTTP--> provisioner serve
    (OVMF's own PXE client first fetches snponly.efi over our TFTP)

The artifacts are small random stand-ins, so the kernels never run: the proof is the HTTP hits the
node makes (node events in the store, the serve log), not an installed OS. Debian's iPXE has no
`poweroff`, so every boot ends with the test killing qemu.

Every boot goes through the driver path: our IPMI driver asks the node's simulated BMC for a one-time
PXE boot in the node's boot mode (inventory `firmware`), and the VM gets the firmware the flags the
BMC received ask for: the EFI boot type starts OVMF, the legacy one SeaBIOS.
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from pathlib import Path

import pytest
from helpers import built_site, copy_spec, need_root, need_tool, pinned, run_cli
from netns import IPXE_ROM, OVMF_CODE, OVMF_VARS, Netns, dnsmasq, netns, qemu, serve, tail, wait_for

from provisioner.drivers.ipmi import IpmiDriver
from provisioner.lab.bmc import SimSite
from provisioner.lab.bmc_process import generate_nodes
from provisioner.lab.loopback import free_block

pytestmark = [pytest.mark.qemu, pytest.mark.root]

SERVER = "10.231.77.1"
HTTP = f"http://{SERVER}:8080"
MACS = {"r1n01": "52:54:00:0a:01:01", "r1n03": "52:54:00:0a:01:03", "r1n04": "52:54:00:0a:01:04",
        "r1n08": "52:54:00:0a:01:08"}
DEADLINE = {"bios": 90, "uefi": 120, "uefi-pxe": 120}
ANSI = re.compile(r"\x1b\[[0-9;=?]*[A-Za-z]|\x1bc")


class Lab:
    """One namespace with br0, dnsmasq and `provisioner serve`, shared by the boots of this module."""

    def __init__(self, work: Path, ns: Netns, ctx, rel, dhcp, server, bmcs: SimSite):
        self.work, self.ns, self.ctx, self.rel, self.dhcp, self.server = work, ns, ctx, rel, dhcp, server
        self.bmcs = bmcs  # one simulated BMC per node of MACS, on loopback outside the namespace
        self.modes = {n.name: n.firmware for _, n in ctx.spec.nodes()}
        self._taps = 0

    def new_tap(self) -> str:
        self._taps += 1
        tap = f"tap{self._taps}"
        self.ns.tap(tap, "br0")
        return tap

    def events(self, node: str, after: int) -> list[dict]:
        return [e for e in self.ctx.store.node_events(node) if e["seq"] > after]

    def last_seq(self, node: str) -> int:
        return max((e["seq"] for e in self.ctx.store.node_events(node)), default=0)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    need_root()
    need_tool("qemu-system-x86_64", "dnsmasq", "ip", "timeout")
    work = tmp_path_factory.mktemp("pxe")
    spec = copy_spec(work / "spec")
    data = work / "data"
    ctx, rel = built_site(spec, data)
    conf = work / "dnsmasq.conf"
    r = run_cli("dhcp", "render", "--server-ip", SERVER, "--interface", "br0", "-o", str(conf),
                spec=spec, data=data)
    assert r.returncode == 0, r.stderr
    with netns("pxe") as ns:
        # the ULA lets dnsmasq send router advertisements: without one iPXE waits ~13 s for IPv6
        ns.bridge("br0", f"{SERVER}/24", "fd77:231::1/64")
        dhcp = dnsmasq(ns, conf, work, "--enable-ra", "--dhcp-range=fd77:231::,ra-only")
        try:
            server = serve(ns, spec, data, work, "--tftp-bind", f"{SERVER}:69", "--http-bind", f"{SERVER}:8080",
                           "-v")
        except BaseException:
            dhcp.stop()
            raise
        base, port = free_block(len(MACS))
        nodes = generate_nodes(len(MACS), base=base, port=port)
        for n, name in zip(nodes, MACS, strict=True):
            n["name"] = name
        try:
            bmcs = SimSite(nodes).start()
        except BaseException:
            server.stop()
            dhcp.stop()
            raise
        try:
            yield Lab(work, ns, ctx, rel, dhcp, server, bmcs)
        finally:
            bmcs.stop()
            server.stop()
            dhcp.stop()


def dhcp_boot_files(log: str, mac: str) -> set[str]:
    """Boot file names dnsmasq put in the DHCPACKs it sent `mac` (its log-dhcp lines, by xid)."""
    by_xid = defaultdict(list)
    for line in log.splitlines():
        if m := re.search(r"dnsmasq-dhcp\[\d+\]: (\d+) (.*)$", line):
            by_xid[m[1]].append(m[2])
    names = set()
    for lines in by_xid.values():
        if any(re.match(rf"DHCPACK\(br0\) \S+ {mac}\b", x) for x in lines):
            names |= {m[1] for x in lines if (m := re.search(r"bootfile[- ]name:?\s+(\S+)", x))}
    return names


def firmware_asked(lab: Lab, node: str, *, option_rom: bool = True) -> str:
    """Ask `node`'s BMC, through our driver, for a one-time PXE boot in the node's boot mode; power
    it on; return the qemu firmware the flags the BMC handed the host at that boot ask for."""
    driver = IpmiDriver(lab.bmcs.endpoints()[node], timeout=5)
    try:
        driver.set_one_time_boot("pxe", mode=lab.modes[node])
        driver.power_cycle()
    finally:
        driver.close()
    flags = lab.bmcs.state(node)["last_boot"]  # device selector and BIOS boot type, as received
    assert flags["device"] == "pxe", flags
    if not flags["efi"]:
        return "bios"  # legacy boot type: SeaBIOS with the iPXE option ROM
    return "uefi" if option_rom else "uefi-pxe"  # OVMF, with or without iPXE's EFI ROM


def boot(lab: Lab, node: str, done, name: str, *, option_rom: bool = True) -> tuple[list[dict], str]:
    """Set `node`'s boot through its BMC, then run a VM with `node`'s MAC and the firmware the BMC's
    flags ask for until `done(events)` holds for the node's new events; kill it.
    Returns (new events, serial console text). Fails with every log tail if the deadline passes."""
    firmware = firmware_asked(lab, node, option_rom=option_rom)
    need_tool(str(IPXE_ROM))
    if firmware != "bios":
        need_tool(str(OVMF_CODE), str(OVMF_VARS))
    after = lab.last_seq(node)
    tap = lab.new_tap()
    t0 = time.monotonic()
    vm = qemu(lab.ns, lab.work, tap=tap, mac=MACS[node], firmware=firmware, name=name,
              limit=DEADLINE[firmware] + 30)
    try:
        ok = wait_for(lambda: done(lab.events(node, after)) or not vm.alive(), DEADLINE[firmware], 0.25)
        took = time.monotonic() - t0
        events = lab.events(node, after)
        if not (ok and done(events)):
            pytest.fail(f"{name}: {node} did not finish its boot in {took:.0f} s (qemu alive: {vm.alive()}); "
                        f"events: {events}\n" + diagnostics(lab, vm), pytrace=False)
    finally:
        vm.stop()
        lab.ns.ip("link", "del", tap)
    print(f"{name}: {node} ({lab.modes[node]}) booted with {firmware} to its callback in {took:.1f} s")
    return events, ANSI.sub("", tail(vm.serial, 200))


def diagnostics(lab: Lab, vm) -> str:
    return (f"--- serial console {vm.serial}:\n{ANSI.sub('', tail(vm.serial, 60))}\n" + vm.describe(10)
            + f"--- dnsmasq {lab.dhcp.dhcp_log}:\n{tail(lab.dhcp.dhcp_log, 40)}\n" + lab.server.describe(30))


def kinds(events: list[dict]) -> list[tuple[str, str]]:
    return [(e["source"], e["event"]) for e in events]


def callback(event: str):
    return lambda events: ("callback", event) in kinds(events)


def test_bios_seabios_ipxe_rom_boots_an_installing_node_into_its_install(lab):
    lab.ctx.store.update_node("r1n04", state="installing", observed=pinned(lab.rel, "r650"))
    events, serial = boot(lab, "r1n04", callback("started"), "bios-install")
    decision = next(e for e in events if e["source"] == "netboot")
    assert decision["event"] == "install" and decision["details"]["kind"] == "ipxe"
    assert decision["details"]["release"] == lab.rel.id
    started = next(e for e in events if e["source"] == "callback")
    assert started["event"] == "started" and started["details"]["boot_action"] == "install"
    assert kinds(events)[:2] == [("netboot", "install"), ("callback", "started")]
    assert f"netboot.decision mac={MACS['r1n04']} node=r1n04 action=install" in lab.server.text()
    # the boot went the way our dnsmasq config says: iPXE was sent straight to the HTTP bootstrap
    assert f"{HTTP}/boot.ipxe" in dhcp_boot_files(tail(lab.dhcp.dhcp_log, 100000), MACS["r1n04"])
    assert f"{HTTP}/boot/52-54-00-0a-01-04.ipxe... ok" in serial


def test_uefi_ovmf_ipxe_rom_boots_a_flashing_node_into_the_flasher(lab):
    lab.ctx.store.update_node("r1n01", state="flashing",
                              observed={**pinned(lab.rel, "r650"), "bios": "1.14.0"})
    events, serial = boot(lab, "r1n01", callback("started"), "uefi-flash")
    assert kinds(events)[:2] == [("netboot", "flash"), ("callback", "started")]
    decision, started = events[0], events[1]
    assert decision["details"]["components"] == ["bios"] and decision["details"]["release"] == lab.rel.id
    assert started["details"]["boot_action"] == "flash"
    assert (f"netboot.decision mac={MACS['r1n01']} node=r1n01 action=flash release={lab.rel.id[:12]} "
            f"components=bios:1.14.0->1.13.2") in lab.server.text()
    assert f"{HTTP}/boot.ipxe" in dhcp_boot_files(tail(lab.dhcp.dhcp_log, 100000), MACS["r1n01"])
    assert re.search(r"Features:.* EFI ", serial)  # iPXE's EFI build ran, not the legacy one


def test_uefi_ovmf_own_pxe_fetches_snponly_over_our_tftp_then_installs(lab):
    lab.ctx.store.update_node("r1n03", state="installing", observed=pinned(lab.rel, "r650"))
    events, serial = boot(lab, "r1n03", callback("started"), "uefi-pxe-install", option_rom=False)
    assert kinds(events)[:2] == [("netboot", "install"), ("callback", "started")]
    assert events[1]["details"]["boot_action"] == "install"
    acked = dhcp_boot_files(tail(lab.dhcp.dhcp_log, 100000), MACS["r1n03"])
    assert {"snponly.efi", f"{HTTP}/boot.ipxe"} <= acked  # firmware first, then iPXE
    log = lab.server.text()
    # EDK2 asks for windowsize 4 (RFC 7440); our TFTP server grants it
    assert re.search(r"tftp\.done client=10\.231\.77\.\d+:\d+ file=snponly\.efi bytes=173792 .*windowsize=4", log)
    assert "UEFI PXEv4 (MAC:5254000A0103)" in serial and "using SNP" in serial


def test_a_node_running_blocked_firmware_is_held_not_booted(lab):
    """Active node, bios 1.12.1 on the deny-list, no re-provision scheduled: the hold config."""
    lab.ctx.store.update_node("r1n08", state="active", observed={**pinned(lab.rel, "r650"), "bios": "1.12.1"})
    before = lab.last_seq("r1n08")
    _, serial = boot(lab, "r1n08", callback("held"), "bios-hold")
    time.sleep(1)  # anything the script did after the callback would be recorded by now
    events = lab.events("r1n08", before)
    assert kinds(events) == [("netboot", "hold"), ("callback", "held")]
    assert "blocked bios 1.12.1" in events[0]["details"]["reason"]
    assert events[1]["details"]["boot_action"] == "hold"
    assert "r1n08 is HELD: runs blocked bios 1.12.1" in serial
    assert "/artifacts/" not in serial  # no kernel, no initrd: nothing destructive was fetched


def test_an_installing_node_on_blocked_firmware_is_reflashed_never_installed(lab):
    """The gate's rule for a node due a reimage that runs a blocked version: flash to the pins first
    (tests/netboot/test_gate.py); it never gets the install config."""
    lab.ctx.store.update_node("r1n04", state="installing", observed={**pinned(lab.rel, "r650"), "bios": "1.12.1"})
    events, serial = boot(lab, "r1n04", callback("started"), "bios-blocked-install")
    assert kinds(events)[:2] == [("netboot", "flash"), ("callback", "started")]
    assert "runs blocked bios 1.12.1" in events[0]["details"]["reason"]
    assert events[0]["details"]["components"] == ["bios"]
    assert events[1]["details"]["boot_action"] == "flash"
    assert ("netboot", "install") not in kinds(events)
