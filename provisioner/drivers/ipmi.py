"""IPMI 2.0 driver on pyghmi: power, one-time boot, firmware versions, HPM.1 out-of-band flash.

Everything is sent as raw IPMI requests through pyghmi.ipmi.command.Command (one RMCP+ session
per BMC, reused across calls), and each operation is run by provisioner.drivers.bounded (one at a
time per BMC, under a deadline, retried with backoff when the error is retryable). The rooms:

    ipmi_wire      command numbers, boot flags, Get Device ID parsing (no I/O)
    hpm_upgrade    the HPM.1 upgrade steps as a state machine (no I/O); this module sends them
    ipmi_errors    pyghmi's exceptions and completion codes -> our error tree, in one place
    pyghmi_fixes   every touch of pyghmi's private state, behind its version check
    ipmi_oem       extensions for a manufacturer's OEM commands, found by entry point

Firmware versions come from, in order of preference:
  1. the OEM extension registered for the manufacturer Get Device ID names, if any;
  2. PICMG HPM.1 Get Component Properties (current version) for each component the BMC lists,
     named by its description string ("BMC", "BIOS", ...), decoded by hpm1.decode_version;
  3. Get Device ID (firmware revision + aux bytes) for the BMC alone.
"""

from __future__ import annotations

import logging
import threading
import time

from pyghmi.ipmi import command as ipmi_command

from provisioner.drivers import bounded, hpm1, ipmi_errors, ipmi_oem, pyghmi_fixes
from provisioner.drivers.base import BmcDriver, BmcEndpoint, ComponentVersion, FlashJob, ProgressCallback
from provisioner.drivers.hpm_upgrade import HpmUpgrade, payload_for
from provisioner.drivers.ipmi_wire import (
    BOOT_FLAGS,
    BOOT_SELECTORS,
    CHASSIS_CONTROL,
    CHASSIS_STATUS,
    CONTROL_CYCLE,
    CONTROL_OFF,
    CONTROL_ON,
    GET_BOOT_OPTIONS,
    GET_DEVICE_ID,
    NETFN_APP,
    NETFN_CHASSIS,
    SET_BOOT_OPTIONS,
    DeviceId,
    boot_flags,
    parse_device_id,
    read_boot_flags,
)
from provisioner.errors import BmcUnreachable, DriverError, Unsupported

__all__ = ["IpmiDriver", "DeviceId", "parse_device_id"]

log = logging.getLogger(__name__)

# Log in again rather than reuse a session idle this long: BMCs drop idle sessions after 30-60 s
# (IPMI 2.0 §13.14 suggests 60 s), and pyghmi's own keepalives are switched off (without_keepalive).
SESSION_IDLE_S = 20.0
# Get Target Upgrade Capabilities: completion codes meaning "no HPM.1 here" rather than a failure
NO_HPM = (0xC1, 0xCC, 0xD4, 0xD5)


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
        if device not in BOOT_SELECTORS:
            raise Unsupported(f"boot device {device!r} is unknown; expected one of {', '.join(BOOT_SELECTORS)}")
        data = boot_flags(device, self._checked_mode(mode))
        self._run("set_one_time_boot", lambda a: self._ok(a, NETFN_CHASSIS, SET_BOOT_OPTIONS, data))

    def firmware_inventory(self) -> dict[str, str]:
        return {v.component: v.version for v in self.firmware_versions() if v.state == "active"}

    def firmware_versions(self) -> list[ComponentVersion]:
        return self._run("firmware_inventory", self._read_versions)

    def supports_oob_flash(self, component: str) -> bool:
        return self._run("supports_oob_flash", lambda a: component in self._components(a))

    def flash(self, component: str, image: bytes, expected_sha256: str, version: str,
              progress: ProgressCallback | None = None) -> FlashJob:
        digest = self._checked_digest(component, image, expected_sha256)
        job = FlashJob(self.endpoint.key, component, version, digest, len(image))
        log.info("flash.start bmc=%s component=%s version=%s bytes=%d", self.endpoint.key, component,
                 version, len(image))
        try:
            bounded.run(self.endpoint.key, f"flash {component}",
                        lambda a: self._attempt(a, lambda a: self._flash(a, job, image, progress)),
                        timeout=self.flash_timeout, retries=self.retries, backoff=self.backoff,
                        abandon=self._abandon, retry_safe=False, stall_timeout=self.timeout,
                        lock_timeout=self.timeout)
        except DriverError as e:
            job.state, job.error, job.finished_at = "failed", f"{type(e).__name__}: {e}", time.time()
            e.job = job
            log.warning("flash.failed bmc=%s component=%s error=%s", self.endpoint.key, component, job.error)
            raise
        log.info("flash.done bmc=%s component=%s version=%s seconds=%s", self.endpoint.key, component,
                 version, job.as_dict()["seconds"])
        return job

    def health(self) -> dict:
        return self._health_report(lambda: self._run("health", self._health))

    def close(self) -> None:
        with self._conn_lock:
            cmd, self._cmd = self._cmd, None
        if cmd is None:
            return
        # Close Session is sent without waiting for the answer (pyghmi's logout), so this is quick.
        future = bounded.POOL.submit(pyghmi_fixes.logout, cmd)
        try:
            future.result(timeout=1.0)
        except Exception:  # a failed logout only leaves a session for the BMC to time out
            pyghmi_fixes.drop_command(cmd)

    # -- running ---------------------------------------------------------------------------------------

    def _run(self, what, fn, *, retry_safe=True):
        return bounded.run(self.endpoint.key, what, lambda a: self._attempt(a, fn), timeout=self.timeout,
                           retries=self.retries, backoff=self.backoff, abandon=self._abandon,
                           retry_safe=retry_safe)

    def _attempt(self, a: bounded.Attempt, fn):
        try:
            with ipmi_errors.map_exceptions(self.endpoint):
                self._connect(a)
                return fn(a)
        except BmcUnreachable:
            with self._conn_lock:  # a session that got no answer is not reused
                if self._cmd is a.session:
                    self._cmd = None
            raise

    def _connect(self, a: bounded.Attempt) -> ipmi_command.Command:
        with self._conn_lock:
            cmd, self._cmd = self._cmd, None
            if (cmd is not None and pyghmi_fixes.session_usable(cmd)
                    and time.monotonic() - self._last_used < SESSION_IDLE_S):
                self._cmd = a.session = cmd
                return cmd
        if cmd is not None:
            pyghmi_fixes.logout(cmd)  # idle too long: the BMC may have dropped it already
        ep = self.endpoint
        try:
            # bytes credentials (fix I): str ones made a second Command() to the same BMC hang
            cmd = ipmi_command.Command(bmc=ep.address, userid=ep.username.encode(),
                                       password=ep.password.encode(), port=ep.port)
        except BaseException:
            pyghmi_fixes.forget_cipher(ep.address, ep.port)
            raise
        pyghmi_fixes.remember_cipher(cmd)  # fix T: the next login offers the suite this one settled on
        pyghmi_fixes.without_keepalive(cmd)
        a.session = cmd
        a.check()
        with self._conn_lock:
            self._cmd, self._last_used = cmd, time.monotonic()
        return cmd

    def _abandon(self, a: bounded.Attempt) -> None:
        with self._conn_lock:
            if self._cmd is a.session:
                self._cmd = None
        ep = self.endpoint
        if a.session is not None:
            pyghmi_fixes.drop_command(a.session)
        else:
            pyghmi_fixes.forget_login(ep.address, ep.username.encode(), ep.password.encode(), ep.port)

    def _raw(self, a: bounded.Attempt, netfn: int, command: int, data=()) -> tuple[int, bytes]:
        """One request; (completion code, data). Raises for no answer."""
        a.check()
        rsp = a.session.raw_command(netfn=netfn, command=command, data=bytes(data))
        if "data" not in rsp:  # pyghmi's retries ran out: {'error': 'timeout', 'code': 0xffff}
            raise ipmi_errors.no_answer(self.endpoint, rsp)
        a.answered = True
        a.progressed()
        self._last_used = time.monotonic()
        return rsp["code"], bytes(rsp["data"])

    def _ok(self, a, netfn: int, command: int, data=()) -> bytes:
        code, body = self._raw(a, netfn, command, data)
        if code:
            raise ipmi_errors.completion_error(self.endpoint, code, netfn, command)
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
        oem = ipmi_oem.extension_for(ident.manufacturer_id)
        if oem is not None:
            versions = oem.firmware_versions(lambda netfn, command, data=b"": self._ok(a, netfn, command, data))
            if versions is not None:
                return versions
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
            self._hpm_upgrade_timeout = max(5.0, caps[3] * 5.0)  # HPM.1 table 3-10: units of 5 s
            for cid in range(8):
                if caps[7] & (1 << cid):
                    desc = self._ok(a, hpm1.NETFN_PICMG, hpm1.GET_COMPONENT_PROPERTIES,
                                    [hpm1.PICMG_ID, cid, hpm1.PROP_DESCRIPTION])[1:]
                    name = desc.split(b"\0", 1)[0].decode("ascii", "replace").strip().lower() or f"component{cid}"
                    found.setdefault(name, cid)
        elif code not in NO_HPM:
            raise ipmi_errors.completion_error(self.endpoint, code, hpm1.NETFN_PICMG,
                                               hpm1.GET_TARGET_UPGRADE_CAPABILITIES)
        self._hpm_components = found
        return found

    def _health(self, a) -> dict:
        power = self._power(a)
        code, flags = self._raw(a, NETFN_CHASSIS, GET_BOOT_OPTIONS, [BOOT_FLAGS, 0, 0])
        boot, mode = read_boot_flags(flags) if code == 0 else ("unknown", "unknown")
        ident = self._device_id(a)
        return {"power": power, "boot_device": boot, "boot_mode": mode,
                "bmc_firmware_revision": ident.firmware_revision,
                "manufacturer_id": ident.manufacturer_id, "product_id": ident.product_id}

    # -- flashing (PICMG HPM.1 §3, steps in provisioner.drivers.hpm_upgrade) --------------------------------

    def _flash(self, a, job: FlashJob, image: bytes, progress) -> FlashJob:
        key, component = self.endpoint.key, job.component
        comps = self._components(a)
        if component not in comps:
            raise Unsupported(f"{key}: the BMC cannot flash {component!r} out of band "
                              f"(HPM.1 components: {', '.join(comps) or 'none'})")
        cid = comps[component]
        payload = payload_for(image, cid, key, component)
        job.previous_version = self._active(a, component)
        upgrade = HpmUpgrade(job, cid, payload, block_size=self.block_size,
                             activation_timeout=self._hpm_upgrade_timeout, poll_interval=self.poll_interval)
        self._notify(job, progress)
        seen = (job.state, job.blocks)
        while not upgrade.done:
            if upgrade.step == "verify":
                upgrade.verified(self._active(a, component))  # a fresh read, never a cached one
            else:
                request = upgrade.request()
                if request.wait:
                    time.sleep(request.wait)
                try:
                    with ipmi_errors.map_exceptions(self.endpoint):
                        code, body = self._raw(a, hpm1.NETFN_PICMG, request.command, request.data)
                except BmcUnreachable as e:
                    raise upgrade.no_answer(str(e)) from None
                upgrade.answer(code, body, time.monotonic())
                a.committed = a.committed or upgrade.committed
            if (job.state, job.blocks) != seen:
                seen = (job.state, job.blocks)
                self._notify(job, progress)
        return job

    def _active(self, a, component: str) -> str | None:
        versions = self._read_versions(a)
        return next((v.version for v in versions if v.component == component and v.state == "active"), None)

    @staticmethod
    def _notify(job: FlashJob, progress) -> None:
        if progress is not None:
            try:
                progress(job)
            except Exception:
                log.exception("flash.progress_callback_failed component=%s", job.component)
