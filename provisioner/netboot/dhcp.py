"""Rendering a dnsmasq configuration for a site's PXE clients.

BIOS clients get undionly.kpxe and UEFI clients snponly.efi (both iPXE) over TFTP; once iPXE
runs (DHCP user class "iPXE", RFC 3004) it is sent straight to the HTTP bootstrap script.
Client architectures are DHCP option 93 values (RFC 4578): 0 BIOS, 7 and 9 x86-64 UEFI.
"""

from __future__ import annotations

import ipaddress
import shutil
from pathlib import Path

from provisioner.spec.models import Spec

ARCH_BIOS, ARCH_EFI_X64, ARCH_EFI_BC = 0, 7, 9  # RFC 4578 §2.1, option 93
IPXE_USER_CLASS = "iPXE"  # option 77, set by iPXE itself

# Debian's packages: ipxe, syslinux-common, pxelinux
DEBIAN_BOOT_FILES = {
    "undionly.kpxe": ["/usr/lib/ipxe/undionly.kpxe"],
    "snponly.efi": ["/usr/lib/ipxe/snponly.efi"],
    "ipxe.efi": ["/usr/lib/ipxe/ipxe.efi", "/boot/ipxe.efi"],
    "pxelinux.0": ["/usr/lib/PXELINUX/pxelinux.0"],
    "ldlinux.c32": ["/usr/lib/syslinux/modules/bios/ldlinux.c32"],
}


def populate_boot_files(dest: Path) -> dict[str, str]:
    """Copy the bootloaders Debian ships into `dest` (never overwriting); return name -> source."""
    dest.mkdir(parents=True, exist_ok=True)
    found = {}
    for name, candidates in DEBIAN_BOOT_FILES.items():
        src = next((Path(c) for c in candidates if Path(c).is_file()), None)
        if src is None:
            continue
        target = dest / name
        if not target.exists():
            shutil.copyfile(src, target)  # a copy, not a symlink: the TFTP root refuses links out of it
            target.chmod(0o644)
        found[name] = str(src)
    return found


def render_dnsmasq(spec: Spec, *, server_ip: str, interface: str, http_port: int = 8080,
                   mode: str = "reservation", dhcp_range: str | None = None, tftp_port: int = 69,
                   lease_time: str = "1h", environments: list[str] | None = None) -> str:
    ip = ipaddress.ip_address(server_ip)
    http_base = f"http://{server_ip}:{http_port}"
    lines = [
        f"# dnsmasq configuration for site {spec.inventory.site}, rendered by `provisioner dhcp render`.",
        "# DHCP only: DNS is off and TFTP/HTTP come from `provisioner serve`.",
        "port=0",
        f"interface={interface}",
        "bind-interfaces",
        "log-dhcp",
        f"dhcp-userclass=set:ipxe,{IPXE_USER_CLASS}",
        f"dhcp-match=set:bios,option:client-arch,{ARCH_BIOS}",
        f"dhcp-match=set:efi64,option:client-arch,{ARCH_EFI_X64}",
        f"dhcp-match=set:efi64,option:client-arch,{ARCH_EFI_BC}",
    ]
    if tftp_port != 69:
        lines.append(f"# note: PXE ROMs always use TFTP port 69; {tftp_port} only works for iPXE chains")
    if mode == "proxy":
        net = ipaddress.ip_network(dhcp_range or f"{ip}/24", strict=False)
        lines += [
            "# proxy mode: another DHCP server hands out addresses; we only add the boot options",
            f"dhcp-range={net.network_address},proxy,{net.netmask}",
            # a name without a suffix gets PXE's layer suffix from dnsmasq: "undionly" -> undionly.0
            f'pxe-service=tag:!ipxe,x86PC,"provisioner (BIOS)",undionly.kpxe,{server_ip}',
            f'pxe-service=tag:!ipxe,X86-64_EFI,"provisioner (UEFI)",snponly.efi,{server_ip}',
            f'pxe-service=tag:ipxe,x86PC,"provisioner (iPXE)",{http_base}/boot.ipxe',
            f'pxe-service=tag:ipxe,X86-64_EFI,"provisioner (iPXE)",{http_base}/boot.ipxe',
        ]
    else:
        if not dhcp_range:
            net = ipaddress.ip_network(f"{ip}/24", strict=False)
            hosts = list(net.hosts())
            dhcp_range = f"{hosts[99]},{hosts[199]}"
        lines += [
            "# reservation mode: only MACs in the inventory get a lease",
            f"dhcp-range={dhcp_range},{lease_time}",
            "dhcp-ignore=tag:!known",
        ]
        for rack, node in spec.nodes():
            if environments and node.environment not in environments:
                continue
            for mac in node.macs:
                lines.append(f"# {node.name}: rack {rack}, {node.model}, {node.firmware}")
                lines.append(f"dhcp-host={mac},{node.name}")
        lines += [
            f"dhcp-boot=tag:ipxe,{http_base}/boot.ipxe",
            f"dhcp-boot=tag:!ipxe,tag:efi64,snponly.efi,,{server_ip}",
            f"dhcp-boot=tag:!ipxe,tag:!efi64,undionly.kpxe,,{server_ip}",
        ]
    return "\n".join(lines) + "\n"
