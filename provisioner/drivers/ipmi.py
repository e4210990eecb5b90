"""IPMI 2.0 driver on pyghmi: power, one-time boot, firmware versions, HPM.1 out-of-band flash.

Everything is sent as raw IPMI requests through pyghmi.ipmi.command.Command (one RMCP+ session
per BMC, reused across calls), with pyghmi patched by provisioner.drivers.pyghmi_fixes, and each
operation run by provisioner.drivers.bounded (one at a time per BMC, under a deadline, retried
with backoff when the error is retryable).

Firmware versions come from, in order of preference:
  1. the lab simulator's OEM inventory command, only if Get Device ID names the simulator's
     manufacturer (provisioner.drivers.sim_oem): exact version strings;
  2. PICMG HPM.1 Get Component Properties (current version) for each component the BMC lists,
     named by its description string ("BMC", "BIOS", ...), decoded by hpm1.decode_version;
  3. Get Device ID (firmware revision + aux bytes, parsed here: fix K) for the BMC alone.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
from dataclasses import dataclass

import pyghmi.exceptions
from pyghmi.ipmi import command as ipmi_command
from pyghmi.ipmi.private import session as ipmi_session
from pyghmi.ipmi.private import util as ipmi_util

from provisioner.drivers import (
    bounded,
    hpm1,
    pyghmi_fixes,  # noqa: F401  (applies fixes D, E, F, H, I, J, O, P)
    sim_oem,
)
from provisioner.drivers.base import BmcDriver, BmcEndpoint, ComponentVersion, FlashJob, ProgressCallback
from provisioner.errors import (
    BmcAuthError,
    BmcBusy,
    BmcTimeout,
    BmcUnreachable,
    DriverError,
    ImageRejected,
    Unsupported,
)

log = logging.getLogger(__name__)

NETFN_CHASSIS, NETFN_APP = 0x00, 0x06
CHASSIS_STATUS, CHASSIS_CONTROL = 0x01, 0x02            # IPMI 2.0 §28.2, §28.3
SET_BOOT_OPTIONS, GET_BOOT_OPTIONS = 0x08, 0x09          # IPMI 2.0 §28.12, §28.13
GET_DEVICE_ID = 0x01                                     # IPMI 2.0 §20.1
CONTROL_OFF, CONTROL_ON, CONTROL_CYCLE = 0, 1, 2
BOOT_FLAGS = 5                                           # boot options parameter 5
BOOT_FLAG_VALID, BOOT_FLAG_EFI = 0x80, 0x20
# Boot device selector, bits 5:2 of boot flags byte 2 (IPMI 2.0 table 28-14)
BOOT_SELECTORS = {"pxe": 1, "disk": 2, "cdrom": 5, "bios": 6, "default": 0}
BOOT_NAMES = {1: "pxe", 2: "disk", 3: "disk", 5: "cdrom", 6: "bios", 0: "default"}
UPLOAD_TOO_LONG = (0xC7, 0xC8, 0xCA)                     # shrink the block and try again
# Log in again rather than reuse a session idle this long: BMCs drop idle sessions after 30-60 s
# (IPMI 2.0 §13.14 suggests 60 s), and pyghmi's own keepalives are switched off (_without_keepalive).
SESSION_IDLE_S = 20.0


@dataclass(frozen=True)
class DeviceId:
    """Get Device ID, parsed per IPMI 2.0 table 20-2 (pyghmi's get_firmware mangles the minor: fix K)."""
    device_id: int
    revision: int
    available: bool
    firmware_major: int
    firmware_minor: int        # BCD, as sent
    ipmi_version: str
    manufacturer_id: int
    product_id: int
    aux: bytes

    @property
    def firmware_revision(self) -> str:
        """As ipmitool prints it: "2.15", "9.08"."""
        return f"{self.firmware_major}.{self.firmware_minor:02x}"

    @property
    def version(self) -> str:
        """Our dotted form (hpm1.decode_version): major.minor.aux."""
        return hpm1.decode_version(bytes([self.firmware_major, self.firmware_minor]) + self.aux.ljust(4, b"\0"))


def parse_device_id(data: bytes) -> DeviceId:
    d = bytes(data)
    if len(d) < 11:
        raise ValueError(f"Get Device ID answer is {len(d)} bytes, expected at least 11")
    return DeviceId(d[0], d[1] & 0x0F, not d[2] & 0x80, d[2] & 0x7F, d[3], f"{d[4] & 0x0F}.{d[4] >> 4}",
                    int.from_bytes(d[6:9], "little") & 0x0FFFFF, int.from_bytes(d[9:11], "little"),
                    d[11:15])


class IpmiDriver(BmcDriver):
    """One BMC over IPMI 2.0 / RMCP+ (cipher suite 3, or the BMC's SHA-256 suite if it has one).

    timeout: every method returns or raises within this many seconds (flash: without progress).
    retries: how many times a retryable failure is tried again, with backoff doubling from `backoff`.
    block_size: first HPM.1 upload block size; shrunk when the BMC says it is too long.
    """

    name = "ipmi"

    def __init__(self, endpoint: BmcEndpoint, timeout: float = 10.0, retries: int = 2, *,
                 backoff: float = 0.2, block_size: int = 1024, flash_timeout: float = 3600.0,
                 poll_interval: float = 0.1):
        super().__init__(endpoint)
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.block_size, self.flash_timeout, self.poll_interval = block_size, flash_timeout, poll_interval
        self._cmd: ipmi_command.Command | None = None
        self._conn_lock = threading.Lock()
        self._identity: DeviceId | None = None           # who the BMC is; does not change
        self._hpm_components: dict[str, int] | None = None  # name -> HPM.1 component id
        self._hpm_upgrade_timeout = 60.0
        self._last_used = 0.0

    # -- the contract ----------------------------------------------------------------------------------

    def power_status(self) -> str:
        return self._run("power_status", lambda a: self._power(a))

    def power_on(self) -> None:
        self._run("power_on", lambda a: self._ok(a, NETFN_CHASSIS, CHASSIS_CONTROL, [CONTROL_ON]))

    def power_off(self) -> None:
        self._run("power_off", lambda a: self._ok(a, NETFN_CHASSIS, CHASSIS_CONTROL, [CONTROL_OFF]))

    def power_cycle(self) -> None:
        def cycle(a):
            directive = CONTROL_ON if self._power(a) == "off" else CONTROL_CYCLE
            a.committed = True
            self._ok(a, NETFN_CHASSIS, CHASSIS_CONTROL, [directive])
        self._run("power_cycle", cycle, retry_safe=False)

    def set_one_time_boot(self, device: str = "pxe", *, mode: str) -> None:
        uefi = mode == "uefi"
        if device not in BOOT_SELECTORS:
            raise Unsupported(f"boot device {device!r} is unknown; expected one of {', '.join(BOOT_SELECTORS)}")
        selector = BOOT_SELECTORS[device]
        flags = 0 if selector == 0 else BOOT_FLAG_VALID | (BOOT_FLAG_EFI if uefi else 0)
        data = [BOOT_FLAGS, flags, selector << 2, 0, 0, 0]
        self._run("set_one_time_boot", lambda a: self._ok(a, NETFN_CHASSIS, SET_BOOT_OPTIONS, data))

    def firmware_inventory(self) -> dict[str, str]:
        return {v.component: v.version for v in self.firmware_versions() if v.state == "active"}

    def firmware_versions(self) -> list[ComponentVersion]:
        return self._run("firmware_inventory", self._read_versions)

    def supports_oob_flash(self, component: str) -> bool:
        return self._run("supports_oob_flash", lambda a: component in self._components(a))

    def flash(self, component: str, image: bytes, expected_sha256: str, version: str,
              progress: ProgressCallback | None = None) -> dict:
        digest = self._checked_digest(component, image, expected_sha256)
        job = FlashJob(self.endpoint.key, component, version, digest, len(image))
        log.info("flash.start bmc=%s component=%s version=%s bytes=%d", self.endpoint.key, component,
                 version, len(image))
        try:
            result = bounded.run(self.endpoint.key, f"flash {component}",
                                 lambda a: self._flash(a, job, image, progress), timeout=self.flash_timeout,
                                 retries=self.retries, backoff=self.backoff, abandon=self._abandon,
                                 retry_safe=False, stall_timeout=self.timeout, lock_timeout=self.timeout)
        except DriverError as e:
            job.state, job.error, job.finished_at = "failed", f"{type(e).__name__}: {e}", time.time()
            e.job = job.as_dict()
            log.warning("flash.failed bmc=%s component=%s error=%s", self.endpoint.key, component, job.error)
            raise
        log.info("flash.done bmc=%s component=%s version=%s seconds=%s", self.endpoint.key, component,
                 version, result["seconds"])
        return result

    def health(self) -> dict:
        started = time.monotonic()
        try:
            out = self._run("health", self._health)
        except DriverError as e:
            return {"ok": False, "driver": self.name, "bmc": self.endpoint.key,
                    "error": f"{type(e).__name__}: {e}", "retryable": e.retryable}
        return {"ok": True, "driver": self.name, "bmc": self.endpoint.key,
                "latency_ms": round((time.monotonic() - started) * 1000, 1), **out}

    def close(self) -> None:
        with self._conn_lock:
            cmd, self._cmd = self._cmd, None
        if cmd is None:
            return
        # Close Session is sent without waiting for the answer (pyghmi's logout), so this is quick.
        future = bounded.POOL.submit(cmd.ipmi_session.logout)
        try:
            future.result(timeout=1.0)
        except Exception:  # a failed logout only leaves a session for the BMC to time out
            _drop_session(cmd.ipmi_session)

    # -- running ---------------------------------------------------------------------------------------

    def _run(self, what, fn, *, retry_safe=True):
        return bounded.run(self.endpoint.key, what, lambda a: self._attempt(a, fn), timeout=self.timeout,
                           retries=self.retries, backoff=self.backoff, abandon=self._abandon,
                           retry_safe=retry_safe)

    def _attempt(self, a: bounded.Attempt, fn):
        try:
            self._connect(a)
            return fn(a)
        except pyghmi.exceptions.IpmiException as e:
            raise self._map(e, a) from None
        except OSError as e:
            raise BmcUnreachable(f"{self.endpoint.key}: {e}") from None

    def _connect(self, a: bounded.Attempt) -> ipmi_command.Command:
        with self._conn_lock:
            cmd, self._cmd = self._cmd, None
            if (cmd is not None and not cmd.ipmi_session.broken and cmd.ipmi_session.logged
                    and time.monotonic() - self._last_used < SESSION_IDLE_S):
                self._cmd = a.session = cmd
                return cmd
        if cmd is not None:
            _logout_quietly(cmd.ipmi_session)  # idle too long: the BMC may have dropped it already
        ep = self.endpoint
        # bytes credentials (fix I): str ones made a second Command() to the same BMC hang
        cmd = ipmi_command.Command(bmc=ep.address, userid=ep.username.encode(),
                                   password=ep.password.encode(), port=ep.port)
        _without_keepalive(cmd.ipmi_session)
        a.session = cmd
        a.check()
        with self._conn_lock:
            self._cmd, self._last_used = cmd, time.monotonic()
        return cmd

    def _abandon(self, a: bounded.Attempt) -> None:
        with self._conn_lock:
            if self._cmd is a.session:
                self._cmd = None
        if a.session is not None:
            _drop_session(a.session.ipmi_session)
        else:
            _forget_login(self.endpoint)

    def _map(self, e: pyghmi.exceptions.IpmiException, a: bounded.Attempt) -> DriverError:
        msg, code, key = str(e), getattr(e, "ipmicode", 0), self.endpoint.key
        if any(s in msg for s in ("Incorrect password", "Unauthorized name", "Unauthorized role",
                                  "Invalid username", "privelege", "privilege")) or code == 0xD4:
            return BmcAuthError(f"{key}: credentials refused for user {self.endpoint.username!r} ({msg})")
        if code == 0xC1:
            return Unsupported(f"{key}: the BMC does not support this command ({msg})")
        if code in (0xC0, 0xC3) or "Insufficient resources" in msg:
            return BmcBusy(f"{key}: the BMC is busy ({msg})")
        if code in (0, 0xFFFF) or "timeout" in msg or "no longer connected" in msg:
            with self._conn_lock:
                self._cmd = None
            return BmcUnreachable(f"{key}: no answer from the BMC ({msg or 'timeout'})")
        return DriverError(f"{key}: the BMC answered completion code {code:#04x} ({msg})")

    def _raw(self, a: bounded.Attempt, netfn: int, command: int, data=()) -> tuple[int, bytes]:
        """One request; (completion code, data). Raises for no answer."""
        a.check()
        rsp = a.session.raw_command(netfn=netfn, command=command, data=bytes(data))
        if "data" not in rsp:  # pyghmi's retries ran out: {'error': 'timeout', 'code': 0xffff}
            raise pyghmi.exceptions.IpmiException(rsp.get("error", "timeout"), rsp.get("code", 0xFFFF))
        a.answered = True
        a.progressed()
        self._last_used = time.monotonic()
        return rsp["code"], bytes(rsp["data"])

    def _ok(self, a, netfn: int, command: int, data=()) -> bytes:
        code, body = self._raw(a, netfn, command, data)
        if code:
            raise pyghmi.exceptions.IpmiException(ipmi_util.get_ipmi_error(
                {"code": code, "netfn": netfn + 1, "command": command}) or "error", code)
        return body

    # -- reading -----------------------------------------------------------------------------------------

    def _power(self, a) -> str:
        return "on" if self._ok(a, NETFN_CHASSIS, CHASSIS_STATUS)[0] & 1 else "off"

    def _device_id(self, a) -> DeviceId:
        ident = parse_device_id(self._ok(a, NETFN_APP, GET_DEVICE_ID))
        self._identity = ident
        return ident

    def _read_versions(self, a) -> list[ComponentVersion]:
        ident = self._identity or self._device_id(a)
        if ident.manufacturer_id == sim_oem.SIM_MANUFACTURER_ID:
            records = sim_oem.unpack_inventory(self._ok(a, sim_oem.NETFN_OEM, sim_oem.GET_INVENTORY))
            return [ComponentVersion(name, v, sim_oem.STATE_NAMES.get(state, "unknown"))
                    for name, state, v in records]
        out = []
        for name, cid in self._components(a).items():
            raw = self._ok(a, hpm1.NETFN_PICMG, hpm1.GET_COMPONENT_PROPERTIES,
                           [hpm1.PICMG_ID, cid, hpm1.PROP_CURRENT_VERSION])
            out.append(ComponentVersion(name, hpm1.decode_version(raw[1:7])))
            code, pending = self._raw(a, hpm1.NETFN_PICMG, hpm1.GET_COMPONENT_PROPERTIES,
                                      [hpm1.PICMG_ID, cid, hpm1.PROP_DEFERRED_VERSION])
            if code == 0 and len(pending) >= 7 and pending[1:3] != b"\x7f\xff":
                out.append(ComponentVersion(name, hpm1.decode_version(pending[1:7]), "pending"))
        if not any(v.component == "bmc" for v in out):
            out.insert(0, ComponentVersion("bmc", self._device_id(a).version))
        return out

    def _components(self, a) -> dict[str, int]:
        """HPM.1 components by our name ("bmc", "bios", ...); {} if the BMC has no HPM.1."""
        if self._hpm_components is not None:
            return self._hpm_components
        code, caps = self._raw(a, hpm1.NETFN_PICMG, hpm1.GET_TARGET_UPGRADE_CAPABILITIES, [hpm1.PICMG_ID])
        found: dict[str, int] = {}
        if code == 0 and len(caps) >= 8:
            self._hpm_upgrade_timeout = max(5.0, caps[3] * 5.0)
            for cid in range(8):
                if caps[7] & (1 << cid):
                    desc = self._ok(a, hpm1.NETFN_PICMG, hpm1.GET_COMPONENT_PROPERTIES,
                                    [hpm1.PICMG_ID, cid, hpm1.PROP_DESCRIPTION])[1:]
                    name = desc.split(b"\0", 1)[0].decode("ascii", "replace").strip().lower() or f"component{cid}"
                    found.setdefault(name, cid)
        elif code not in (0xC1, 0xCC, 0xD4, 0xD5):
            raise pyghmi.exceptions.IpmiException("Get Target Upgrade Capabilities failed", code)
        self._hpm_components = found
        return found

    def _health(self, a) -> dict:
        power = self._power(a)
        code, flags = self._raw(a, NETFN_CHASSIS, GET_BOOT_OPTIONS, [BOOT_FLAGS, 0, 0])
        boot = "unknown"
        if code == 0 and len(flags) >= 4:
            boot = BOOT_NAMES.get((flags[3] >> 2) & 0x0F, "other") if flags[2] & BOOT_FLAG_VALID else "default"
        ident = self._device_id(a)
        return {"power": power, "boot_device": boot, "bmc_firmware_revision": ident.firmware_revision,
                "manufacturer_id": ident.manufacturer_id, "product_id": ident.product_id}

    # -- flashing (PICMG HPM.1 §3) ---------------------------------------------------------------------

    def _flash(self, a, job: FlashJob, image: bytes, progress) -> dict:
        self._connect(a)
        try:
            return self._flash_steps(a, job, image, progress)
        except pyghmi.exceptions.IpmiException as e:
            raise self._map(e, a) from None
        except OSError as e:
            raise BmcUnreachable(f"{self.endpoint.key}: {e}") from None

    def _flash_steps(self, a, job: FlashJob, image: bytes, progress) -> dict:
        key, component = self.endpoint.key, job.component
        comps = self._components(a)
        if component not in comps:
            raise Unsupported(f"{key}: the BMC cannot flash {component!r} out of band "
                              f"(HPM.1 components: {', '.join(comps) or 'none'})")
        cid = comps[component]
        payload = _payload_for(image, cid, key, component)
        job.bytes_total = len(payload)
        job.previous_version = self._active(a, component)
        self._notify(job, progress, "uploading")

        code, _ = self._raw(a, hpm1.NETFN_PICMG, hpm1.INITIATE_UPGRADE_ACTION,
                            [hpm1.PICMG_ID, 1 << cid, hpm1.ACTION_UPLOAD_FOR_UPGRADE])
        code = self._long(a, code)
        if code == 0xD5:
            raise BmcBusy(f"{key}: the BMC is in the middle of another firmware operation")
        if code:
            raise ImageRejected(f"{key}: the BMC refused to start an upgrade of {component} (code {code:#04x})")
        a.committed = True
        block, confirmed, offset, number = self.block_size, False, 0, 0
        while offset < len(payload):
            chunk = payload[offset:offset + block]
            code, _ = self._raw(a, hpm1.NETFN_PICMG, hpm1.UPLOAD_FIRMWARE_BLOCK,
                                bytes([hpm1.PICMG_ID, number & 0xFF]) + chunk)
            if code in UPLOAD_TOO_LONG and not confirmed and block > 16:
                block = max(16, block // 2)
                continue
            code = self._long(a, code)
            if code:
                raise BmcUnreachable(f"{key}: the BMC dropped the upload of {component} at block {number} "
                                     f"(code {code:#04x}); {job.previous_version} is still active; flash again")
            confirmed, offset, number = True, offset + len(chunk), number + 1
            job.bytes_sent, job.blocks, job.block_size = offset, number, block
            self._notify(job, progress)

        code, _ = self._raw(a, hpm1.NETFN_PICMG, hpm1.FINISH_FIRMWARE_UPLOAD,
                            bytes([hpm1.PICMG_ID, cid]) + struct.pack("<I", len(payload)))
        code = self._long(a, code)
        if code in (hpm1.CC_HPM_81, hpm1.CC_HPM_82, hpm1.CC_HPM_83):
            raise ImageRejected(f"{key}: the BMC refused the {component} image after upload (code {code:#04x}: "
                                f"{'length mismatch' if code == hpm1.CC_HPM_81 else 'validation failed'})")
        if code:
            raise DriverError(f"{key}: Finish Firmware Upload failed with code {code:#04x}")

        self._notify(job, progress, "activating")
        code, _ = self._raw(a, hpm1.NETFN_PICMG, hpm1.ACTIVATE_FIRMWARE, [hpm1.PICMG_ID])
        code = self._long(a, code, self._hpm_upgrade_timeout)
        if code:
            raise DriverError(f"{key}: activation of {component} failed with code {code:#04x}")

        self._notify(job, progress, "verifying")
        found = self._active(a, component)  # a fresh read, never a cached one
        if found != job.version:
            raise ImageRejected(f"{key}: after activation {component} reports {found!r}, the release says "
                                f"{job.version!r}")
        job.finished_at = time.time()
        self._notify(job, progress, "active")
        return job.as_dict()

    def _active(self, a, component: str) -> str | None:
        versions = self._read_versions(a)
        return next((v.version for v in versions if v.component == component and v.state == "active"), None)

    def _long(self, a, code: int, limit: float = 60.0) -> int:
        """Wait out a long-duration command (code 80h) by polling Get Upgrade Status (HPM.1 §3.4)."""
        deadline = time.monotonic() + limit
        while code == hpm1.CC_IN_PROGRESS:
            if time.monotonic() > deadline:
                raise BmcTimeout(f"{self.endpoint.key}: HPM.1 command still in progress after {limit:.0f}s")
            time.sleep(self.poll_interval)
            status = self._ok(a, hpm1.NETFN_PICMG, hpm1.GET_UPGRADE_STATUS, [hpm1.PICMG_ID])
            code = status[2] if len(status) >= 3 else 0
        return code

    @staticmethod
    def _notify(job: FlashJob, progress, state: str | None = None) -> None:
        if state:
            job.state = state
        if progress is not None:
            try:
                progress(job)
            except Exception:
                log.exception("flash.progress_callback_failed component=%s", job.component)


def _payload_for(image: bytes, cid: int, key: str, component: str) -> bytes:
    """The bytes to upload: the component's record of an HPM.1 image, or the image itself."""
    if not image.startswith(hpm1.IMAGE_SIGNATURE):
        return image
    try:
        parsed = hpm1.parse_image(image)
    except ValueError as e:
        raise ImageRejected(f"{key}: {component} image is not a valid HPM.1 image: {e}") from None
    upload = parsed.upload_for(cid)
    if upload is None:
        raise ImageRejected(f"{key}: the HPM.1 image has no upload record for {component} (component id {cid})")
    return upload.data


def _drop_session(s) -> None:
    """End a session whose caller gave up on it: no reuse, no retries, no timers.

    pyghmi runs every session's retry timers from whichever thread waits in its event loop, so
    a session left to time out on its own (a dead BMC: 10-20 s of retries, then a logout) stalls
    unrelated logins in other threads; seen here as 5-12 s pauses among 500 healthy BMCs. So the
    abandoned session is taken off every pyghmi list and told it is over: its own thread leaves
    its wait loop at once with "Session no longer connected" and nobody else touches it again.
    """
    S = ipmi_session.Session
    with ipmi_util.protect(ipmi_session.KEEPALIVE_SESSIONS):
        S.keepalive_sessions.pop(s, None)
    with ipmi_util.protect(ipmi_session.WAITING_SESSIONS):
        S.waiting_sessions.pop(s, None)
    for k, v in list(S.initting_sessions.items()):
        if v is s:
            S.initting_sessions.pop(k, None)
    s.lastpayload = s.onlogpayload = None
    s.logged, s.logging, s.incommand = 0, False, False
    if not getattr(s, "broken", True):
        s.errormsg = "session abandoned after its caller's deadline"  # pyghmi raises with it
        s.broken = True
        if getattr(s, "socket", None) is not None:
            s.socketpool[s.socket] -= 1
    evq = getattr(s, "evq", None)
    while evq:
        evq.popleft().set()


def _without_keepalive(s) -> None:
    """Take a session off pyghmi's keepalive list.

    pyghmi sends keepalives from whichever thread happens to be waiting in its event loop; for a
    BMC that went away, the keepalive's timeout and logout then block that unrelated thread for
    10-15 s (seen here: one round of 500 operations stalled 12 s). The driver re-logs in after
    SESSION_IDLE_S instead.
    """
    with ipmi_util.protect(ipmi_session.KEEPALIVE_SESSIONS):
        ipmi_session.Session.keepalive_sessions.pop(s, None)


def _logout_quietly(s) -> None:
    try:
        s.logout()  # Close Session, not waited for
    except Exception:
        _drop_session(s)


def _forget_login(ep: BmcEndpoint) -> None:
    """A login we abandoned before it returned a session: end it (see _drop_session).

    Found by its key in pyghmi's list of logins in progress; anyone else logging in to this BMC
    with these credentials would have joined that very login.
    """
    key = (ep.address, ep.username.encode(), ep.password.encode(), ep.port)
    for k, v in list(ipmi_session.Session.initting_sessions.items()):
        if k[:4] == key:
            _drop_session(v)
