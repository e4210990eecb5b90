"""Rendering a dnsmasq configuration for a site's PXE clients.

BIOS clients get undionly.kpxe and UEFI clients snponly.efi (both iPXE) over TFTP; once iPXE
runs (DHCP user class "iPXE", RFC 3004) it is sent straight to the HTTP bootstrap script.
Client architectures are DHCP option 93 values (RFC 4578): 0 BIOS, 7 and 9 x86-64 UEFI.
"""

from __future__ import annotations

import ipaddress
import re
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


# Linux interface names: at most IFNAMSIZ-1 = 15 bytes, no '/', whitespace or ','; dnsmasq's
# config would take a newline as the start of a new directive, so the name is checked strictly.
INTERFACE_NAME = re.compile(r"^[A-Za-z0-9_.:@-]{1,15}$")


def parse_server_ip(text: str) -> ipaddress.IPv4Address:
    """The boot server's address as nodes see it: one unicast IPv4 address (PXE ROMs speak DHCPv4)."""
    try:
        ip = ipaddress.ip_address(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address; expected four numbers 0-255, like 10.0.0.1") from None
    if ip.version != 4:
        raise ValueError(f"{text} is IPv6; expected an IPv4 address (PXE ROMs boot over DHCPv4)")
    if ip.is_unspecified or ip.is_multicast or ip == ipaddress.IPv4Address("255.255.255.255"):
        raise ValueError(f"{text} is not an address a node can reach; expected the server's unicast address")
    return ip


def parse_interface(text: str) -> str:
    if not INTERFACE_NAME.match(text):
        raise ValueError(f"{text!r} is not an interface name; expected up to 15 letters, digits or _.:@-, like eth1")
    return text


def parse_range(text: str, *, mode: str, server_ip: ipaddress.IPv4Address) -> str:
    """`--range`: START,END addresses around the server (reservation), or the server's subnet (proxy)."""
    if mode == "proxy":
        try:
            net = ipaddress.ip_network(text.strip(), strict=False)
        except ValueError:
            raise ValueError(f"{text!r} is not a subnet; expected one like 10.0.0.0/24") from None
        if net.version != 4 or server_ip not in net:
            raise ValueError(f"{text} does not contain the server {server_ip}; expected the subnet nodes boot on")
        return str(net)
    parts = [p.strip() for p in text.split(",")]
    try:
        start, end = (ipaddress.IPv4Address(p) for p in parts) if len(parts) == 2 else (None, None)
    except ValueError:
        start = end = None
    if start is None:
        raise ValueError(f"{text!r} is not a range; expected START,END, like 10.0.0.100,10.0.0.200")
    if start > end:
        raise ValueError(f"{text} starts after it ends; expected START,END with START <= END")
    return f"{start},{end}"


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
    """The configuration text; ValueError (one line, what to write instead) for a wrong option."""
    ip = parse_server_ip(server_ip)
    interface = parse_interface(interface)
    if not 0 < http_port < 65536:
        raise ValueError(f"HTTP port {http_port} is out of range; expected 1-65535")
    if dhcp_range is not None:
        dhcp_range = parse_range(dhcp_range, mode=mode, server_ip=ip)
    if environments:
        unknown = sorted(set(environments) - set(spec.policy.environments))
        if unknown:
            raise ValueError(f"unknown environment {unknown[0]!r}; expected one of {', '.join(spec.policy.environments)}")
    server_ip = str(ip)
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
            dhcp_range = f"{net.network_address + 100},{net.network_address + 200}"
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
