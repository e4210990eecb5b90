"""Simulated hosts that really netboot: the part of a lab server behind its BMC.

When a simulated BMC powers its host on with the one-time boot device set to PXE, the host:
  0. reads the boot flags its BMC received, as firmware does at POST: a PXE request whose BIOS boot
     type (IPMI 2.0 §28.13 parameter 5: legacy or EFI) is not the mode the host is set up for
     (`firmware_type`, from the spec) is not honoured, as on real servers: no PXE, it boots from
     disk and nothing reports back;
  1. fetches its bootloader over TFTP, chosen by the flags (undionly.kpxe for legacy, snponly.efi
     for EFI); a UEFI host asks for RFC 7440's windowsize 4, as EDK2's PXE does
     (NetworkPkg's PcdPxeTftpWindowSize), a legacy PXE ROM sends one block per ACK;
  2. runs "iPXE": BIOS hosts fetch their per-MAC script over TFTP (boot-<mac>.ipxe), UEFI hosts
     fetch the HTTP bootstrap and chain to /boot/<mac>.ipxe, as real iPXE does;
  3. interprets the script (imgfetch, kernel, initrd, chain, boot, echo, exit, goto, ||), checking
     every image against the script's `#@sha256` annotations;
  4. "boots the kernel": the flasher fetches its config, downloads each image, checks its sha256 and
     its SIMFW1 header, applies it (the BMC then reports the new version) and calls back; the
     installer fetches and checks the rootfs, writes the release id to the simulated disk and calls
     back. A local boot calls back "booted" from iPXE.
Faults: a host whose firmware is on `boot_loop` never reaches iPXE and keeps power-cycling.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shlex
import socket
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

from provisioner.drivers import http11
from provisioner.netboot.tftp_client import TftpFetchError, fetch

log = logging.getLogger("provisioner.lab.host")
# EDK2's UEFI PXE asks for this TFTP windowsize (RFC 7440) when it downloads the boot program
# (NetworkPkg.dec PcdPxeTftpWindowSize = 4, used by UefiPxeBcDxe's MTFTP read)
UEFI_TFTP_WINDOW = 4


class Site(Protocol):
    def firmware(self, node: str) -> dict[str, str]: ...
    def set_firmware(self, node: str, component: str, version: str, *, how: str = ...) -> None: ...
    def state(self, node: str) -> dict: ...
    def last_boot(self, node: str) -> dict | None: ...


class _Connection:
    """One kept-alive HTTP connection of a booting host (TCP_NODELAY: each request is one send)."""

    __slots__ = ("sock", "rfile")

    def __init__(self, address: tuple[str, int], timeout: float):
        self.sock = socket.create_connection(address, timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.rfile = self.sock.makefile("rb")

    def close(self) -> None:
        self.rfile.close()
        self.sock.close()


class BootFailed(Exception):
    pass


class PxeRetry(BootFailed):
    """Nothing was booted yet (no bootloader, no script): the firmware tries again."""


class NetbootHost:
    """The host side of every simulated server of a site (one instance serves them all)."""

    def __init__(self, site: Site, *, macs: dict[str, str], firmware_type: dict[str, str],
                 tftp: tuple[str, int], http_base: str, disk_dir: Path, models: dict[str, str] | None = None,
                 boot_loop: set[tuple[str, str]] | None = None, flash_seconds: float = 0.05,
                 workers: int = 64, http_timeout: float = 10.0):
        self.site, self.macs, self.fw_type = site, macs, firmware_type
        self.tftp, self.http_base = tftp, http_base.rstrip("/")
        self.disk_dir = Path(disk_dir)
        self.disk_dir.mkdir(parents=True, exist_ok=True)
        self.models = models or {}
        self.boot_loop = set(boot_loop or ())
        self.flash_seconds, self.http_timeout = flash_seconds, http_timeout
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="sim-host")
        self._boots: dict[str, int] = {}
        self._lock = threading.Lock()
        self._conns = threading.local()  # this boot's HTTP connections, (host, port) -> connection
        self.journal: list[dict] = []  # what each host did, newest last (bounded)

    # -- the BMC hook ----------------------------------------------------------------------------
    def on_power_on(self, node: str, device: str) -> None:
        with self._lock:
            self._boots[node] = boot = self._boots.get(node, 0) + 1
        self._pool.submit(self._boot, node, device, boot)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _note(self, node: str, event: str, **details) -> None:
        entry = {"at": round(time.time(), 3), "node": node, "event": event, **details}
        with self._lock:
            self.journal.append(entry)
            del self.journal[:-5000]
        level = logging.WARNING if event.endswith("failed") or event == "boot_loop" else logging.INFO
        log.log(level, "host.%s node=%s %s", event, node, " ".join(f"{k}={v}" for k, v in details.items()))

    def _boot(self, node: str, device: str, boot: int) -> None:
        try:
            self._boot_once(node, device, boot)
        finally:
            self._close_connections()

    def _boot_once(self, node: str, device: str, boot: int) -> None:
        try:
            fw = self.site.firmware(node)
            looping = sorted(f"{c} {v}" for c, v in fw.items() if (c, v) in self.boot_loop)
            if looping:
                # POST never completes: no DHCP, no TFTP, no callback; the BMC sees it power-cycle
                self._note(node, "boot_loop", firmware=",".join(looping), boot=boot)
                return
            if device != "pxe":
                self._note(node, "disk_boot", boot=boot, release=self.installed_release(node))
                return
            asked, own = self._asked_mode(node), self.fw_type.get(node, "uefi")
            if asked != own:
                # A UEFI-only firmware has no legacy PXE stack (and a legacy BIOS no EFI one): it
                # skips the request and goes on down its boot order to the disk.
                self._note(node, "boot_mode_mismatch", asked=asked, firmware=own, boot=boot)
                self._note(node, "disk_boot", boot=boot, release=self.installed_release(node))
                return
            for attempt in range(1, 4):  # like PXE firmware: retry the boot before giving up
                try:
                    self._netboot(node, asked)
                    return
                except PxeRetry as e:
                    self._note(node, "pxe_retry", attempt=attempt, error=str(e))
                    time.sleep(0.5 * attempt)
            raise BootFailed("PXE: no boot server after 3 attempts")
        except BootFailed as e:
            self._note(node, "boot_failed", error=str(e))
        except Exception as e:  # a bug in the simulator must not kill the site
            log.exception("host.bug node=%s", node)
            self._note(node, "boot_failed", error=f"{e.__class__.__name__}: {e}")

    # -- firmware stage ---------------------------------------------------------------------------
    def _asked_mode(self, node: str) -> str:
        """The boot mode of this boot's PXE request, from the flags the BMC handed the firmware."""
        efi = (self.site.last_boot(node) or {}).get("efi")
        return "uefi" if efi else "bios"

    def _netboot(self, node: str, mode: str) -> None:
        mac = self.macs[node]
        hexhyp = mac.replace(":", "-")
        host, port = self.tftp
        loader = "undionly.kpxe" if mode == "bios" else "snponly.efi"
        try:
            nbp = fetch(host, port, loader, blksize=1468, timeout=0.5, retries=6,
                        windowsize=UEFI_TFTP_WINDOW if mode == "uefi" else None)
        except TftpFetchError as e:
            raise PxeRetry(f"PXE: {e}") from None
        self._note(node, "pxe", loader=loader, bytes=len(nbp))
        if mode == "bios":
            try:
                script = fetch(host, port, f"boot-{hexhyp}.ipxe", blksize=1468, timeout=0.5, retries=6).decode()
            except TftpFetchError as e:
                raise PxeRetry(f"iPXE: {e}") from None
        else:
            try:
                bootstrap = self._get(f"{self.http_base}/boot.ipxe").decode()
                script = self._get(self._chain_target(bootstrap, hexhyp)).decode()
            except BootFailed as e:
                raise PxeRetry(str(e)) from None
        Ipxe(self, node, hexhyp).run(script)

    def _chain_target(self, bootstrap: str, hexhyp: str) -> str:
        for line in bootstrap.splitlines():
            parts = line.split()
            if parts[:1] == ["chain"]:
                return parts[1].replace("${net0/mac:hexhyp}", hexhyp)
        raise BootFailed("bootstrap script has no chain")

    def _get(self, url: str, data: bytes | None = None, headers: dict | None = None) -> bytes:
        """GET (or POST `data`) over HTTP/1.1, keeping the connection for the rest of this boot as
        iPXE's connection pool does; a kept connection the server closed meanwhile is opened anew.
        Framed by provisioner.drivers.http11 (RFC 9112), as the Redfish driver is: http.client
        parsed each response's header block with the email package, a tenth of the hosts' CPU."""
        where = url.split("?")[0]
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise BootFailed(f"GET {where}: unsupported URL")
        key = (parts.hostname, parts.port or 80)
        target = parts.path + (f"?{parts.query}" if parts.query else "") or "/"
        method = "POST" if data is not None else "GET"
        message = http11.encode_request(method, target, parts.netloc, headers or {}, data)
        pool = self._conns.__dict__.setdefault("pool", {})
        for fresh in (False, True):
            conn = pool.pop(key, None) if not fresh else None
            reused = conn is not None
            try:
                if conn is None:
                    conn = _Connection(key, self.http_timeout)
                conn.sock.sendall(message)
                r = http11.read_response(conn.rfile, method)
            except (http11.ClosedBeforeAnswer, ConnectionResetError, BrokenPipeError) as e:
                if conn is not None:
                    conn.close()
                if reused:
                    continue  # the server closed the kept connection: once more on a new one
                raise BootFailed(f"GET {where}: {e}") from None
            except (OSError, http11.ProtocolError) as e:
                if conn is not None:
                    conn.close()
                raise BootFailed(f"GET {where}: {e}") from None
            if r.will_close:
                conn.close()
            else:
                pool[key] = conn
            if r.status >= 400:
                raise BootFailed(f"GET {where}: HTTP {r.status} {r.body[:200]!r}")
            return r.body
        raise AssertionError("unreachable")

    def _close_connections(self) -> None:
        for conn in self._conns.__dict__.pop("pool", {}).values():
            conn.close()

    # -- the "kernel": flasher and installer --------------------------------------------------------
    def run_kernel(self, node: str, args: dict[str, str]) -> None:
        mode = args.get("provisioner.mode")
        callback, token = args["provisioner.callback"], args["provisioner.token"]
        try:
            if mode == "flash":
                versions = self._flash(node, args["provisioner.flasher"])
                self._callback(callback, token, {"event": "flashed", "firmware": versions,
                                                 "release": args["provisioner.release"]})
            elif mode == "install":
                release = self._install(node, args)
                self._callback(callback, token, {"event": "installed", "release": release})
            else:
                raise BootFailed(f"kernel: unknown provisioner.mode {mode!r}")
        except BootFailed as e:
            self._note(node, f"{mode}_failed", error=str(e))
            try:
                self._callback(callback, token, {"event": "failed", "error": str(e)[:1000]})  # reports: ≤ 1 KiB
            except BootFailed:
                pass

    def _flash(self, node: str, flasher_url: str) -> dict[str, str]:
        cfg = json.loads(self._get(flasher_url))
        model = self.models.get(node)
        for comp in cfg["components"]:
            image = self._get(comp["url"])
            digest = hashlib.sha256(image).hexdigest()
            if digest != comp["sha256"]:
                raise BootFailed(f"flash {comp['name']}: image sha256 {digest[:12]} != {comp['sha256'][:12]}; refused")
            header = _simfw_header(image)
            if header.get("component") != comp["name"] or header.get("version") != comp["version"] or (
                    model and header.get("model") != model):
                raise BootFailed(f"flash {comp['name']}: image is for {header}, not {model} {comp['name']} "
                                 f"{comp['version']}; refused")
            time.sleep(self.flash_seconds)
            self.site.set_firmware(node, comp["name"], comp["version"])
            self._note(node, "flashed", component=comp["name"], version=comp["version"])
        return self.site.firmware(node)

    def _install(self, node: str, args: dict[str, str]) -> str:
        release = args["provisioner.release"]
        if "provisioner.rootfs" in args:
            rootfs = self._get(args["provisioner.rootfs"])
            if hashlib.sha256(rootfs).hexdigest() != args.get("provisioner.rootfs_sha256"):
                raise BootFailed("install: rootfs sha256 mismatch; refused")
        disk = self.disk_dir / f"{node}.json"
        tmp = disk.with_suffix(".tmp")
        tmp.write_text(json.dumps({"release": release, "installed_at": time.time()}))
        tmp.replace(disk)
        self._note(node, "installed", release=release[:12])
        return release

    def installed_release(self, node: str) -> str | None:
        try:
            return json.loads((self.disk_dir / f"{node}.json").read_text())["release"]
        except (FileNotFoundError, ValueError, KeyError):
            return None

    def _callback(self, url: str, token: str, body: dict) -> None:
        """Report to the server; like a real agent, retry a report that got no answer (not a refusal)."""
        for attempt in range(1, 5):
            try:
                self._get(url, data=json.dumps(body).encode(),
                          headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
                return
            except BootFailed as e:
                if "HTTP 4" in str(e) or attempt == 4:
                    raise
                time.sleep(0.5 * attempt)


def _simfw_header(image: bytes) -> dict:
    if not image.startswith(b"SIMFW1"):
        return {}
    try:
        return json.loads(image[6:image.index(b"\n")])
    except ValueError:
        return {}


class Ipxe:
    """Just enough of iPXE's script language to run what our templates render."""

    def __init__(self, host: NetbootHost, node: str, hexhyp: str):
        self.host, self.node, self.hexhyp = host, node, hexhyp
        self.images: dict[str, bytes] = {}
        self.kernel_args: dict[str, str] | None = None

    def run(self, script: str, depth: int = 0) -> None:
        if not script.startswith("#!ipxe"):
            raise BootFailed("iPXE: not an iPXE script")
        if depth > 4:
            raise BootFailed("iPXE: chain too deep")
        lines = script.splitlines()
        expected = {}
        for ln in lines:  # `#@sha256 <image> <hex>` annotations pin what each image must hash to
            if ln.startswith("#@sha256 "):
                _, name, digest = ln.split()
                expected[name] = digest
        labels = {ln[1:].strip(): i for i, ln in enumerate(lines) if ln.startswith(":")}
        pc, steps = 0, 0
        while pc < len(lines):
            steps += 1
            if steps > 200:
                raise BootFailed("iPXE: script loops")
            line = lines[pc].strip()
            pc += 1
            if not line or line.startswith("#") or line.startswith(":"):
                continue
            main, _, fallback = line.partition(" || ")
            try:
                result = self._command(main.strip(), expected, depth)
            except BootFailed as e:
                if not fallback:
                    raise
                self.host._note(self.node, "ipxe_error", command=main.split()[0], error=str(e)[:120])
                result = self._command(fallback.strip(), expected, depth)
            if isinstance(result, tuple) and result[0] == "goto":
                if result[1] not in labels:
                    raise BootFailed(f"iPXE: no label {result[1]}")
                pc = labels[result[1]] + 1
            elif result == "exit" or result == "booted":
                return

    def _command(self, cmd: str, expected: dict, depth: int):
        cmd = cmd.replace("${net0/mac:hexhyp}", self.hexhyp)
        # shlex only where its quoting rules can change the words: it was 1/30 of the lab's CPU
        words = shlex.split(cmd) if any(c in cmd for c in "\"'\\") else cmd.split()
        if not words:
            return None
        op, rest = words[0], words[1:]
        name = None
        if rest[:1] and rest[0].startswith("--name"):
            name = rest[1] if rest[0] == "--name" else rest[0].split("=", 1)[1]
            rest = rest[2:] if rest[0] == "--name" else rest[1:]
        if op in ("echo", "dhcp", "sleep", "imgfree"):
            if op == "echo":
                self.host._note(self.node, "console", text=" ".join(rest)[:200])
            return None
        if op == "goto":
            return ("goto", rest[0])
        if op == "exit":
            self.host._note(self.node, "ipxe_exit", code=rest[0] if rest else "0")
            return "exit"
        if op == "chain":
            self.run(self.host._get(rest[0]).decode(), depth + 1)
            return "exit"
        if op in ("imgfetch", "kernel", "initrd"):
            data = self.host._get(rest[0])
            key = {"kernel": "kernel", "initrd": "initrd"}.get(op, name or rest[0])
            want = expected.get(key)
            if want and hashlib.sha256(data).hexdigest() != want:
                raise BootFailed(f"iPXE: {key} sha256 mismatch; refused")
            self.images[name or key] = data
            if op == "kernel":
                self.kernel_args = dict(a.split("=", 1) for a in rest[1:] if "=" in a)
            return None
        if op == "boot":
            if self.kernel_args is None or "initrd" not in self.images:
                raise BootFailed("iPXE: boot without kernel and initrd")
            self.host.run_kernel(self.node, self.kernel_args)
            return "booted"
        raise BootFailed(f"iPXE: unsupported command {op!r}")
