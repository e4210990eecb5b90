"""A simulated host boots the way the flags its BMC received ask, and refuses a boot mode it is not set up for.

Real servers are set up for one boot mode. A UEFI-only server asked for a legacy PXE boot (IPMI
boot flags without the EFI bit) has no legacy PXE stack: it skips the request and boots from its
disk, so nothing reports back; a legacy-BIOS server asked for an EFI boot does the same. The lab
host must be as strict, or a driver that sends the wrong flag looks fine in every lab test.
"""

from __future__ import annotations

import functools
import http.server
import logging
import os
import subprocess
import threading
import time

import pytest
from helpers import need_tool

from provisioner.drivers.ipmi import IpmiDriver
from provisioner.lab.bmc import SimSite
from provisioner.lab.bmc_process import generate_nodes
from provisioner.lab.host import NetbootHost
from provisioner.lab.loopback import free_block
from provisioner.netboot.tftp import TftpServer

UEFI_HOST, BIOS_HOST = "sim0000", "sim0001"
MACS = {UEFI_HOST: "52:54:00:5e:00:01", BIOS_HOST: "52:54:00:5e:00:02"}


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """Two BMCs on loopback, the hosts behind them (one UEFI, one legacy BIOS), TFTP and HTTP
    serving the two bootloaders and a per-MAC iPXE script that just ends."""
    root = tmp_path_factory.mktemp("boot")
    (root / "undionly.kpxe").write_bytes(b"legacy iPXE " * 100)
    (root / "snponly.efi").write_bytes(b"EFI iPXE " * 100)
    (root / "boot").mkdir()
    for mac in MACS.values():
        script = "#!ipxe\necho booted by our script\nexit 0\n"
        (root / f"boot-{mac.replace(':', '-')}.ipxe").write_text(script)   # legacy: over TFTP
        (root / "boot" / f"{mac.replace(':', '-')}.ipxe").write_text(script)  # EFI: over HTTP
    web = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root)))
    (root / "boot.ipxe").write_text(
        f"#!ipxe\nchain http://127.0.0.1:{web.server_port}/boot/${{net0/mac:hexhyp}}.ipxe\n")
    threading.Thread(target=web.serve_forever, daemon=True).start()
    tftp = TftpServer(root, host="127.0.0.1", port=0).start()
    base, port = free_block(2)
    site = SimSite(generate_nodes(2, base=base, port=port))
    host = NetbootHost(site, macs=MACS, firmware_type={UEFI_HOST: "uefi", BIOS_HOST: "bios"},
                       tftp=("127.0.0.1", tftp.port), http_base=f"http://127.0.0.1:{web.server_port}",
                       disk_dir=root / "disks")
    site.on_power_on = host.on_power_on
    site.start()
    try:
        yield site, host
    finally:
        site.stop()
        host.close()
        tftp.stop()
        web.shutdown()


def boot_outcome(host: NetbootHost, node: str, since: int) -> list[tuple[str, dict]]:
    """The host's journal for `node` after entry `since`, once its boot ended (disk or iPXE exit)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        mine = [(e["event"], e) for e in host.journal[since:] if e["node"] == node]
        if any(ev in ("disk_boot", "ipxe_exit", "boot_failed") for ev, _ in mine):
            return mine
        time.sleep(0.05)
    pytest.fail(f"{node}: no end of boot in the journal: {host.journal[since:]}")


def ipmitool(ep, *args: str) -> str:
    r = subprocess.run(["ipmitool", "-I", "lanplus", "-C", "3", "-H", ep.address, "-p", str(ep.port),
                        "-U", ep.username, "-E", *args], env={**os.environ, "IPMI_PASSWORD": ep.password},
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


@pytest.mark.parametrize("node, mode, loader", [(UEFI_HOST, "uefi", "snponly.efi"),
                                                (BIOS_HOST, "bios", "undionly.kpxe")])
def test_a_host_asked_in_its_own_boot_mode_netboots_the_loader_of_that_mode(lab, node, mode, loader, caplog):
    site, host = lab
    since = len(host.journal)
    driver = IpmiDriver(site.endpoints()[node])
    with caplog.at_level(logging.INFO, logger="provisioner.netboot.tftp"):
        driver.set_one_time_boot("pxe", mode=mode)
        driver.power_cycle()
        events = boot_outcome(host, node, since)
    assert [e["loader"] for ev, e in events if ev == "pxe"] == [loader]
    assert "ipxe_exit" in [ev for ev, _ in events] and "boot_mode_mismatch" not in [ev for ev, _ in events]
    assert site.state(node)["last_boot"]["efi"] is (mode == "uefi")
    # the loader's download as the server saw it: UEFI firmware (EDK2) asks for RFC 7440's
    # windowsize 4, a legacy PXE ROM for none (one block per ACK)
    done = [r.getMessage() for r in caplog.records if r.getMessage().startswith("tftp.done")
            and f"file={loader}" in r.getMessage()]
    assert len(done) == 1 and f"windowsize={4 if mode == 'uefi' else 1} " in done[0], done


@pytest.mark.parametrize("node, bootdev, asked", [
    (UEFI_HOST, ["pxe"], "bios"),                     # ipmitool's default: legacy boot type
    (BIOS_HOST, ["pxe", "options=efiboot"], "uefi"),
])
def test_a_host_asked_for_the_other_boot_mode_does_not_netboot_and_falls_to_its_disk(lab, node, bootdev, asked):
    need_tool("ipmitool")
    site, host = lab
    since = len(host.journal)
    ep = site.endpoints()[node]
    ipmitool(ep, "chassis", "bootdev", *bootdev)  # flags set by a tool nobody here wrote
    ipmitool(ep, "power", "cycle" if site.state(node)["power"] == "on" else "on")
    events = boot_outcome(host, node, since)
    kinds = [ev for ev, _ in events]
    assert "pxe" not in kinds and "ipxe_exit" not in kinds, events  # no bootloader fetched, nothing ran
    assert kinds[-2:] == ["boot_mode_mismatch", "disk_boot"]
    mismatch = events[-2][1]
    assert (mismatch["asked"], mismatch["firmware"]) == (asked, "uefi" if node == UEFI_HOST else "bios")
