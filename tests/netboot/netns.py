"""Test helpers for real network boots: network namespaces, a bridge with taps, veth pairs, dnsmasq,
`provisioner serve` and qemu, each a real process started and cleaned up by the test.

Everything runs inside namespaces the test creates (root only), so no packet leaves them. Every
process is started in its own session and stopped by its own id (SIGTERM, then SIGKILL to its
process group, which `timeout` and qemu share).
"""

from __future__ import annotations

import ctypes
import itertools
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
_names = itertools.count()

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
# Debian's ipxe-qemu: iPXE for virtio-net, legacy (SeaBIOS) and EFI images in one ROM, which qemu
# loads by default for virtio-net-pci. Naming it with romfile= (or pxe-virtio.rom) made SeaBIOS skip
# the network boot entirely here, so the default is used and this path is only checked for.
IPXE_ROM = Path("/usr/lib/ipxe/qemu/efi-virtio.rom")


def sh(*cmd: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=check, capture_output=True, text=True, **kw)


def wait_for(predicate: Callable[[], object], timeout: float, interval: float = 0.2) -> object:
    """Poll `predicate` until it returns something truthy (returned) or `timeout` passes (None)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


def tail(path: Path, lines: int = 40) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError as e:
        return f"<{path}: {e}>"
    return "\n".join(text.splitlines()[-lines:])


# -- namespaces ---------------------------------------------------------------------------------
class Netns:
    """A network namespace with `lo` up; `delete()` removes it and every interface inside it."""

    def __init__(self, prefix: str = "pv"):
        self.name = f"{prefix}-{os.getpid()}-{next(_names)}"
        sh("ip", "netns", "add", self.name)
        try:
            self.ip("link", "set", "lo", "up")
        except BaseException:
            self.delete()
            raise

    def ip(self, *args: str) -> subprocess.CompletedProcess:
        return sh("ip", "-n", self.name, *args)

    def cmd(self, *args: str) -> list[str]:
        """`args` as a command line that runs inside the namespace."""
        return ["ip", "netns", "exec", self.name, *args]

    def bridge(self, dev: str, *addresses: str) -> None:
        """A bridge (no STP, no forwarding delay) with `addresses` (IPv6 ones without DAD), up."""
        self.ip("link", "add", dev, "type", "bridge", "stp_state", "0", "forward_delay", "0")
        for a in addresses:
            self.ip("addr", "add", a, "dev", dev, *(["nodad"] if ":" in a else []))
        self.ip("link", "set", dev, "up")

    def tap(self, dev: str, bridge: str) -> None:
        self.ip("tuntap", "add", "dev", dev, "mode", "tap")
        self.ip("link", "set", dev, "master", bridge, "up")

    def delete(self) -> None:
        sh("ip", "netns", "del", self.name, check=False)

    @contextmanager
    def entered(self) -> Iterator[None]:
        """Run the body with this thread in the namespace (sockets made there stay there)."""
        libc = ctypes.CDLL(None, use_errno=True)
        clone_newnet = 0x40000000
        with open("/proc/thread-self/ns/net") as home, open(f"/run/netns/{self.name}") as target:
            if libc.setns(target.fileno(), clone_newnet) != 0:
                raise OSError(ctypes.get_errno(), "setns into " + self.name)
            try:
                yield
            finally:
                if libc.setns(home.fileno(), clone_newnet) != 0:
                    raise OSError(ctypes.get_errno(), "setns back from " + self.name)


@contextmanager
def netns(prefix: str = "pv") -> Iterator[Netns]:
    ns = Netns(prefix)
    try:
        yield ns
    finally:
        ns.delete()


# -- processes ----------------------------------------------------------------------------------
@dataclass
class Proc:
    """A process started by the test, its stdout+stderr in `log`."""

    name: str
    argv: list[str]
    log: Path
    env: dict | None = None
    popen: subprocess.Popen | None = field(default=None, repr=False)

    def start(self) -> Proc:
        self._out = open(self.log, "ab")
        self.popen = subprocess.Popen(self.argv, stdout=self._out, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, env=self.env, start_new_session=True)
        return self

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_log(self, needle: str, timeout: float) -> bool:
        """True once `needle` is in the log; False if the process died or time ran out."""
        def seen():
            return needle in self.text() or not self.alive()
        wait_for(seen, timeout, 0.05)
        return needle in self.text()

    def stop(self, grace: float = 5.0) -> int | None:
        """SIGTERM; SIGKILL to the process group after `grace` s. Returns the exit code."""
        p = self.popen
        if p is None:
            return None
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(p.pid, signal.SIGKILL)  # our own session: qemu under `timeout`, stragglers
        except ProcessLookupError:
            pass
        rc = p.wait(5)
        self._out.close()
        return rc

    def describe(self, lines: int = 40) -> str:
        rc = self.popen.poll() if self.popen else None
        return f"--- {self.name} (exit {rc}) {self.log}, last {lines} lines:\n{tail(self.log, lines)}\n"


def dnsmasq(ns: Netns, conf: Path, work: Path, *extra: str, name: str = "dnsmasq") -> Proc:
    """Real dnsmasq in `ns` with the configuration `conf` (rendered by us) plus test-only flags."""
    log = work / f"{name}.log"
    argv = ns.cmd("dnsmasq", "-k", f"--conf-file={conf}", f"--pid-file={work / name}.pid",
                  f"--dhcp-leasefile={work / name}.leases", f"--log-facility={log}", "--user=root", *extra)
    p = Proc(name, argv, work / f"{name}.out").start()
    if not wait_for(lambda: "DHCP" in tail(log) or not p.alive(), 10, 0.05) or not p.alive():
        out = p.describe() + f"--- {log}:\n{tail(log)}"
        p.stop()
        raise AssertionError("dnsmasq did not start:\n" + out)
    p.dhcp_log = log
    return p


def serve(ns: Netns | None, spec: Path, data: Path, work: Path, *args: str, name: str = "serve") -> Proc:
    """`provisioner serve` (the real CLI, `python -m provisioner`), optionally inside `ns`."""
    argv = [sys.executable, "-m", "provisioner", "--spec", str(spec), "--data", str(data), "serve", *args]
    if ns is not None:
        argv = ns.cmd(*argv)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "400"}
    env.pop("PROVISIONER_DB", None)
    p = Proc(name, argv, work / f"{name}.log", env=env).start()
    if not p.wait_log("serving ", 30):
        out = p.describe()
        p.stop()
        raise AssertionError("provisioner serve did not start:\n" + out)
    return p


def qemu(ns: Netns, work: Path, *, tap: str, mac: str, firmware: str, name: str, limit: int = 180) -> Proc:
    """A PXE-booting qemu (TCG) on `tap`; firmware is "bios" (SeaBIOS + iPXE ROM), "uefi" (OVMF +
    iPXE EFI ROM) or "uefi-pxe" (OVMF's own PXE client, no option ROM). Serial console -> log."""
    serial = work / f"{name}.serial"
    argv = ["timeout", "--kill-after=5", str(limit), "qemu-system-x86_64", "-accel", "tcg",
            "-m", "256", "-smp", "1", "-display", "none", "-vga", "none", "-monitor", "none",
            "-nodefaults", "-serial", f"file:{serial}", "-no-reboot",
            "-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no"]
    nic = f"virtio-net-pci,netdev=n0,mac={mac},bootindex=1"
    if firmware == "bios":
        sercon = work / f"{name}.sercon"
        sercon.write_bytes(b"\xf8\x03")  # SeaBIOS: mirror VGA text (where iPXE prints) to COM1 at 0x3f8
        argv += ["-fw_cfg", f"name=etc/sercon-port,file={sercon}", "-boot", "n",
                 "-device", nic]
    elif firmware in ("uefi", "uefi-pxe"):
        vars_copy = work / f"{name}.vars.fd"
        shutil.copyfile(OVMF_VARS, vars_copy)
        nic += ",romfile=" if firmware == "uefi-pxe" else ""  # no option ROM: OVMF's own PXE client
        argv += ["-machine", "q35",
                 "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
                 "-drive", f"if=pflash,format=raw,unit=1,file={vars_copy}",
                 "-device", nic]
    else:
        raise ValueError(firmware)
    p = Proc(name, ns.cmd(*argv), work / f"{name}.log").start()
    p.serial = serial
    return p


# -- DHCP on the wire ---------------------------------------------------------------------------
DHCP_MAGIC = b"\x63\x82\x53\x63"
DISCOVER, OFFER = 1, 2


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", "").replace("-", ""))


def dhcp_discover(mac: str, xid: int, *, arch: int | None = None, user_class: bytes | None = None,
                  pxe: bool = True) -> bytes:
    """A DHCPDISCOVER as PXE firmware sends it (broadcast flag set, options 60/93/94, maybe 77)."""
    chaddr = mac_bytes(mac)
    bootp = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 1, 1, 6, 0, xid, 0, 0x8000, bytes(4), bytes(4),
                        bytes(4), bytes(4), chaddr, bytes(64), bytes(128))
    opts = bytearray([53, 1, DISCOVER])
    opts += bytes([55, 7, 1, 3, 6, 43, 60, 66, 67])
    if pxe:
        vendor = f"PXEClient:Arch:{arch or 0:05d}:UNDI:003016".encode()
        opts += bytes([60, len(vendor)]) + vendor
    if arch is not None:
        opts += bytes([93, 2]) + struct.pack("!H", arch) + bytes([94, 3, 1, 3, 16])
    if user_class is not None:
        opts += bytes([77, len(user_class)]) + user_class  # iPXE sends the bare string, not RFC 3004
    opts += bytes([255])
    return bootp + DHCP_MAGIC + bytes(opts)


def udp_broadcast_frame(src_mac: str, payload: bytes, sport: int = 68, dport: int = 67) -> bytes:
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload  # checksum 0: none (IPv4)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, bytes(4), b"\xff" * 4)
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    return b"\xff" * 6 + mac_bytes(src_mac) + b"\x08\x00" + ip + udp


@dataclass
class DhcpReply:
    msg_type: int
    yiaddr: str
    siaddr: str
    file: str
    options: dict[int, bytes]

    @property
    def boot_file(self) -> str:
        """Option 67 if present, else the BOOTP file field."""
        opt = self.options.get(67)
        return opt.rstrip(b"\0").decode() if opt else self.file


def parse_dhcp(payload: bytes) -> tuple[int, DhcpReply] | None:
    if len(payload) < 240 or payload[236:240] != DHCP_MAGIC or payload[0] != 2:
        return None
    xid = struct.unpack("!I", payload[4:8])[0]
    yiaddr, siaddr = socket.inet_ntoa(payload[16:20]), socket.inet_ntoa(payload[20:24])
    file = payload[108:236].split(b"\0", 1)[0].decode(errors="replace")
    options: dict[int, bytes] = {}
    i = 240
    while i < len(payload):
        code = payload[i]
        if code == 255:
            break
        if code == 0:
            i += 1
            continue
        length = payload[i + 1]
        options[code] = options.get(code, b"") + payload[i + 2:i + 2 + length]
        i += 2 + length
    msg = options.get(53, b"\0")[0]
    return xid, DhcpReply(msg, yiaddr, siaddr, file, options)


class DhcpProbe:
    """Sends hand-made DHCP packets on `ifname` inside `ns` and reads the replies (AF_PACKET)."""

    def __init__(self, ns: Netns, ifname: str):
        with ns.entered():
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
            self.sock.bind((ifname, 0x0800))
        self._xids = itertools.count(0x5EED0000 + os.getpid() % 0xFFFF * 16)

    def discover(self, mac: str, *, timeout: float = 3.0, **kw) -> DhcpReply | None:
        """Send a DISCOVER for `mac`; the OFFER (or None if nothing came within `timeout`)."""
        return self.reply(self.send_discover(mac, **kw), timeout)

    def send_discover(self, mac: str, **kw) -> int:
        """Broadcast a DISCOVER for `mac` (keywords: see `dhcp_discover`); returns its xid."""
        xid = next(self._xids)
        self.sock.send(udp_broadcast_frame(mac, dhcp_discover(mac, xid, **kw)))
        return xid

    def reply(self, xid: int, timeout: float) -> DhcpReply | None:
        """The first reply to `xid` within `timeout`, or None."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                frame = self.sock.recv(4096)
            except TimeoutError:
                break
            if len(frame) < 42 or frame[12:14] != b"\x08\x00" or frame[23] != 17:
                continue
            ihl = (frame[14] & 0x0F) * 4
            udp = frame[14 + ihl:]
            if struct.unpack("!H", udp[2:4])[0] != 68:
                continue
            parsed = parse_dhcp(udp[8:])
            if parsed and parsed[0] == xid:
                return parsed[1]
        return None

    def close(self) -> None:
        self.sock.close()


def pxe_boot_server_request(ns: Netns, client_ip: str, server_ip: str, mac: str, *, arch: int,
                            item: int | None, user_class: bytes | None = None,
                            timeout: float = 3.0) -> DhcpReply | None:
    """PXE boot server discovery (PXE 2.1 §2.2.5): the DHCPREQUEST a client with an address sends to
    port 4011 for menu item `item` (layer 0) after a proxy offer; the server's ACK, or None.
    `item=None` sends no boot item, as UEFI firmware does when the proxy offer had no menu."""
    xid = 0x4011_0000 + arch * 256 + ((item or 0) & 0xFF)
    pkt = bytearray(dhcp_discover(mac, xid, arch=arch, user_class=user_class))
    pkt[12:16] = socket.inet_aton(client_ip)  # ciaddr
    pkt[242] = 3  # option 53 (the first option): DHCPREQUEST
    if item is not None:
        boot_item = bytes([71, 4]) + struct.pack("!HH", item, 0) + bytes([255])
        pkt[-1:-1] = bytes([43, len(boot_item)]) + boot_item  # before the end option
    with ns.entered():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with s:
        s.bind((client_ip, 68))
        s.settimeout(timeout)
        s.sendto(bytes(pkt), (server_ip, 4011))
        try:
            while True:
                parsed = parse_dhcp(s.recv(4096))
                if parsed and parsed[0] == xid:
                    return parsed[1]
        except TimeoutError:
            return None
