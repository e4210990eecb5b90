"""`provisioner dhcp render`: the dnsmasq configuration is valid for dnsmasq itself, lists the
inventory, and a real dnsmasq running it answers real DHCP packets as PXE firmware and iPXE need.

The exchange tests put dnsmasq in one network namespace and a hand-made DHCP client (raw
AF_PACKET frames, as firmware sends them) in another, joined by a veth pair.
"""

from __future__ import annotations

import ipaddress
import re
import struct
import subprocess
from pathlib import Path

import pytest
from helpers import copy_spec, need_root, need_tool, run_cli
from netns import DhcpProbe, dnsmasq, netns, pxe_boot_server_request, tail, wait_for

from provisioner.spec.loader import load_spec

SERVER = "10.231.78.1"
CLIENT = "10.231.78.50"  # the proxy-mode client's address (from "another" DHCP server)
BOOT_URL = f"http://{SERVER}:8080/boot.ipxe"
BIOS_MAC, UEFI_MAC, UNKNOWN_MAC = "52:54:00:0a:01:04", "52:54:00:0a:01:01", "52:54:00:99:99:99"
OFFER_TIMEOUT = 8.0  # dnsmasq pings a new address for up to 3 s before offering it


@pytest.fixture(scope="module")
def spec(tmp_path_factory) -> Path:
    return copy_spec(tmp_path_factory.mktemp("dhcp") / "spec")


def render(spec: Path, out: Path, *args: str, interface: str = "veth0") -> Path:
    r = run_cli("dhcp", "render", "--server-ip", SERVER, "--interface", interface, "-o", str(out), *args,
                spec=spec, data=out.parent / "data")
    assert r.returncode == 0, r.stderr
    return out


@pytest.mark.parametrize("mode", ["reservation", "proxy"])
def test_dnsmasq_accepts_the_rendered_configuration(spec, tmp_path, mode):
    need_tool("dnsmasq")
    conf = render(spec, tmp_path / f"{mode}.conf", "--mode", mode)
    r = subprocess.run(["dnsmasq", "--test", f"--conf-file={conf}"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "syntax check OK" in r.stdout + r.stderr, r.stdout + r.stderr


def dhcp_hosts(text: str) -> dict[str, str]:
    return dict(m.groups() for m in re.finditer(r"^dhcp-host=([0-9a-f:]{17}),(\S+)$", text, re.M))


def test_reservation_mode_has_one_dhcp_host_per_inventory_mac_and_ignores_the_rest(spec, tmp_path):
    text = render(spec, tmp_path / "res.conf").read_text()
    inventory = {mac: node.name for _, node in load_spec(spec).nodes() for mac in node.macs}
    assert len(inventory) >= 20
    assert dhcp_hosts(text) == inventory
    assert text.count("dhcp-host=") == len(inventory)
    assert "dhcp-ignore=tag:!known" in text.splitlines()


def test_reservation_mode_can_be_limited_to_one_environment(spec, tmp_path):
    text = render(spec, tmp_path / "staging.conf", "--environment", "staging").read_text()
    staging = {mac: n.name for _, n in load_spec(spec).nodes() if n.environment == "staging" for mac in n.macs}
    assert staging and dhcp_hosts(text) == staging


def test_proxy_mode_hands_out_no_addresses_and_no_host_lines(spec, tmp_path):
    text = render(spec, tmp_path / "proxy.conf", "--mode", "proxy").read_text()
    assert "dhcp-range=10.231.78.0,proxy,255.255.255.0" in text.splitlines()
    assert "dhcp-host=" not in text and "dhcp-ignore" not in text


# -- a real exchange ------------------------------------------------------------------------------
def lan(tmp_path_factory, spec: Path, mode: str, client_ip: str | None):
    """dnsmasq (our config) on veth0 in one namespace, a probe on veth1 in another."""
    need_root()
    need_tool("dnsmasq", "ip")
    work = tmp_path_factory.mktemp(f"dhcp-{mode}")
    conf = render(spec, work / f"{mode}.conf", "--mode", mode)
    with netns("dhs") as srv, netns("dhc") as cli:
        srv.ip("link", "add", "veth0", "type", "veth", "peer", "name", "veth1", "netns", cli.name)
        srv.ip("addr", "add", f"{SERVER}/24", "dev", "veth0")
        srv.ip("link", "set", "veth0", "up")
        if client_ip:
            cli.ip("addr", "add", f"{client_ip}/24", "dev", "veth1")
        cli.ip("link", "set", "veth1", "up")
        proc = dnsmasq(srv, conf, work)
        probe = DhcpProbe(cli, "veth1")
        try:
            yield probe, proc, cli
        finally:
            probe.close()
            proc.stop()


@pytest.fixture(scope="module")
def reservation_lan(tmp_path_factory, spec):
    yield from lan(tmp_path_factory, spec, "reservation", None)


@pytest.fixture(scope="module")
def proxy_lan(tmp_path_factory, spec):
    yield from lan(tmp_path_factory, spec, "proxy", CLIENT)


def offer(lan, mac, **kw):
    probe, proc, _ = lan
    reply = probe.discover(mac, timeout=OFFER_TIMEOUT, **kw)
    assert reply is not None, f"no DHCPOFFER for {mac} {kw}\n--- dnsmasq log:\n{tail(proc.dhcp_log, 60)}"
    assert reply.msg_type == 2  # DHCPOFFER
    return reply


def in_range(addr: str) -> bool:
    return ipaddress.ip_address("10.231.78.100") <= ipaddress.ip_address(addr) <= ipaddress.ip_address(
        "10.231.78.200")


@pytest.mark.root
@pytest.mark.parametrize(("mac", "arch", "expected"), [
    (BIOS_MAC, 0, "undionly.kpxe"),
    (UEFI_MAC, 7, "snponly.efi"),
    (UEFI_MAC, 9, "snponly.efi"),
], ids=["bios-arch0", "uefi-arch7", "uefi-arch9"])
def test_a_known_pxe_client_is_offered_the_ipxe_loader_for_its_architecture(reservation_lan, mac, arch,
                                                                            expected):
    reply = offer(reservation_lan, mac, arch=arch)
    assert reply.boot_file == expected
    assert reply.siaddr == SERVER  # next-server: where the TFTP request goes
    assert in_range(reply.yiaddr)


@pytest.mark.root
@pytest.mark.parametrize("arch", [0, 7])
def test_ipxe_is_sent_to_the_http_bootstrap_script_whatever_the_firmware(reservation_lan, arch):
    reply = offer(reservation_lan, BIOS_MAC if arch == 0 else UEFI_MAC, arch=arch, user_class=b"iPXE")
    assert reply.boot_file == BOOT_URL


@pytest.mark.root
def test_a_mac_outside_the_inventory_gets_no_offer(reservation_lan):
    probe, proc, _ = reservation_lan
    xid = probe.send_discover(UNKNOWN_MAC, arch=0)
    # not a slow or lost reply: dnsmasq saw the request and ignored it on purpose
    assert wait_for(lambda: f"DHCPDISCOVER(veth0) {UNKNOWN_MAC} ignored" in tail(proc.dhcp_log, 400), 5)
    assert probe.reply(xid, timeout=1.5) is None
    assert probe.discover(BIOS_MAC, arch=0, timeout=OFFER_TIMEOUT) is not None  # the LAN still works


def pxe_menu(vendor_options: bytes) -> dict[str, int]:
    """The PXE boot menu (option 43, sub-option 9) of a proxy offer: description -> boot item type."""
    i, menu = 0, {}
    while i < len(vendor_options) and vendor_options[i] != 255:
        code, length = vendor_options[i], vendor_options[i + 1]
        if code == 9:
            body, j = vendor_options[i + 2:i + 2 + length], 0
            while j + 3 <= len(body):
                item, n = struct.unpack("!HB", body[j:j + 3])
                menu[body[j + 3:j + 3 + n].decode()] = item
                j += 3 + n
        i += 2 + length
    return menu


@pytest.mark.root
def test_proxy_mode_offers_bios_clients_a_pxe_menu_and_no_address(proxy_lan):
    reply = offer(proxy_lan, BIOS_MAC, arch=0)
    assert reply.yiaddr == "0.0.0.0" and reply.options.get(60) == b"PXEClient"
    assert list(pxe_menu(reply.options[43])) == ["provisioner (BIOS)"]
    ipxe = offer(proxy_lan, BIOS_MAC, arch=0, user_class=b"iPXE")
    assert list(pxe_menu(ipxe.options[43])) == ["provisioner (iPXE)"]


@pytest.mark.root
def test_proxy_mode_points_uefi_clients_at_the_boot_server(proxy_lan):
    reply = offer(proxy_lan, UEFI_MAC, arch=7)  # no menu: dnsmasq's workaround for UEFI firmware
    assert reply.yiaddr == "0.0.0.0" and reply.siaddr == SERVER


@pytest.mark.root
@pytest.mark.parametrize(("arch", "user_class", "menu_entry", "expected"), [
    (0, None, "provisioner (BIOS)", "undionly.kpxe"),
    (7, None, None, "snponly.efi"),
    (0, b"iPXE", "provisioner (iPXE)", BOOT_URL),
], ids=["bios", "uefi", "ipxe"])
def test_proxy_mode_boot_server_names_a_file_we_serve(proxy_lan, arch, user_class, menu_entry, expected):
    """The second half of a proxy boot: the client asks port 4011 for the menu item it chose."""
    _, proc, cli = proxy_lan
    item = pxe_menu(offer(proxy_lan, BIOS_MAC, arch=arch, user_class=user_class).options.get(43, b""))
    reply = pxe_boot_server_request(cli, CLIENT, SERVER, BIOS_MAC, arch=arch, user_class=user_class,
                                    item=item[menu_entry] if menu_entry else None)
    assert reply is not None, f"no reply from the boot server\n--- dnsmasq log:\n{tail(proc.dhcp_log, 60)}"
    assert reply.msg_type == 5 and reply.siaddr == SERVER  # DHCPACK; TFTP from us
    assert reply.boot_file == expected
