"""Redfish driver on sushy: power, one-time boot, firmware inventory, UpdateService flashing.

One BMC per driver object; every operation runs through provisioner.drivers.bounded (one at a time
per BMC, under a deadline, retried with backoff when retryable). Connections and the TLS context
come from provisioner.drivers.redfish_http, which is also where every sushy/requests failure is
translated into our error tree (once, in `translate`).

Options (from the spec: the credentials' `ca_bundle`, the `bmc:` mapping's `image_server`, the
manifest's `redfish.software_ids`; see README "Redfish"):
    ca_bundle      PEM file or directory trusted for the BMC's certificate (default: system store)
    image_server   base URL at which the BMC can fetch /artifacts/sha256/<hex> from us; without it,
                   or when the BMC has no SimpleUpdate or cannot fetch from us, the image is pushed
    software_ids   {component: SoftwareId} naming the FirmwareInventory members (default: the
                   member Id or SoftwareId equals the component's name)

Firmware (DSP0268 UpdateService): SimpleUpdate with ImageURI, else MultipartHttpPushUri; progress
from the task monitor until the task ends or flash_timeout passes; a task that ends asking for a
reset (ApplyTime OnReset) is followed by a power cycle; then a fresh FirmwareInventory read must
show the release's version. Nothing is cached but the resource paths, which a BMC never moves,
and which components it can flash (from the last inventory read; versions are always read anew).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping

import sushy

from provisioner.drivers import bounded, redfish_http
from provisioner.drivers.base import BOOT_MODES, BmcDriver, BmcEndpoint, FlashJob, ProgressCallback
from provisioner.drivers.redfish_update import UpdateServiceFlash, simple_update_target
from provisioner.errors import BmcTimeout, BmcUnreachable, DriverError, Unsupported

log = logging.getLogger(__name__)

# Our boot devices -> ComputerSystem.Boot.BootSourceOverrideTarget (DSP0268 ComputerSystem BootSource)
BOOT_TARGETS = {"pxe": "Pxe", "disk": "Hdd", "cdrom": "Cd", "bios": "BiosSetup"}
BOOT_MODE_NAMES = {"bios": "Legacy", "uefi": "UEFI"}  # BootSourceOverrideMode
RESTARTS = ("ForceRestart", "PowerCycle", "GracefulRestart")  # in order of preference


class RedfishDriver(UpdateServiceFlash, BmcDriver):
    """One BMC over Redfish (HTTPS, session authentication, falling back to HTTP Basic)."""

    name = "redfish"

    def __init__(self, endpoint: BmcEndpoint, timeout: float = 10.0, retries: int = 2, *, backoff: float = 0.2,
                 ca_bundle: str | None = None, image_server: str | None = None,
                 software_ids: Mapping[str, str] | tuple = (), flash_timeout: float = 1800.0,
                 poll_interval: float = 0.1):
        super().__init__(endpoint)
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.ca_bundle, self.image_server = ca_bundle, (image_server or "").rstrip("/") or None
        self.software_ids = dict(software_ids)
        self.flash_timeout, self.poll_interval = flash_timeout, poll_interval
        self.base_url = f"https://{endpoint.address}:{endpoint.port}"
        self._root: sushy.Sushy | None = None
        self._conn = None
        self._paths: dict[str, str] = {}   # resource paths found once: system, update service, ...
        self._flashable: set[str] | None = None  # components the last inventory read showed updateable
        self._lock = threading.Lock()

    # -- the contract ----------------------------------------------------------------------------------

    def power_status(self) -> str:
        return self._run("power_status", lambda a: _power(self._system(a)[0]))

    def power_on(self) -> None:
        def on(a):
            system, _ = self._system(a)
            if _power(system) == "off":
                self._reset(a, system, "On")
                self._wait_power(a, "on")
        self._run("power_on", on)

    def power_off(self) -> None:
        def off(a):
            system, _ = self._system(a)
            if _power(system) == "on":
                self._reset(a, system, "ForceOff")
                self._wait_power(a, "off")
        self._run("power_off", off)

    def power_cycle(self) -> None:
        self._run("power_cycle", self._cycle, retry_safe=False)

    def set_one_time_boot(self, device: str = "pxe", *, mode: str) -> None:
        if device not in (*BOOT_TARGETS, "default"):
            raise Unsupported(f"boot device {device!r} is unknown; expected one of {', '.join([*BOOT_TARGETS, 'default'])}")
        if mode not in BOOT_MODES:
            raise Unsupported(f"boot mode {mode!r} is unknown; expected one of {', '.join(BOOT_MODES)}")

        def patch(a):
            system, etag = self._system(a)
            boot = system.get("Boot") or {}
            target = BOOT_TARGETS.get(device, "None")
            allowed = boot.get("BootSourceOverrideTarget@Redfish.AllowableValues")
            if allowed is not None and target not in allowed:
                raise Unsupported(f"{self.endpoint.key}: the BMC cannot boot from {target} (it offers {allowed})")
            change = {"BootSourceOverrideTarget": target,
                      "BootSourceOverrideEnabled": "Disabled" if device == "default" else "Once"}
            if device != "default" and ("BootSourceOverrideMode" in boot or mode == "bios"):
                change["BootSourceOverrideMode"] = BOOT_MODE_NAMES[mode]
            # If-Match with the ETag just read (DSP0266 §13.2.3), as sushy does; some BMCs require it
            self._root._conn.patch(self._paths["system"], data={"Boot": change}, etag=etag)
        self._run("set_one_time_boot", patch)

    def firmware_inventory(self) -> dict[str, str]:
        return self._run("firmware_inventory", lambda a: {c: m["Version"] for c, m in self._inventory(a).items()})

    def supports_oob_flash(self, component: str) -> bool:
        """From what the last inventory read said the BMC can flash (a member's Updateable and the
        UpdateService's actions do not change while we hold a session); read now if none was."""
        def check(a):
            if self._flashable is None:
                self._inventory(a)
            return component in self._flashable
        return self._run("supports_oob_flash", check)

    def flash(self, component: str, image: bytes, expected_sha256: str, version: str,
              progress: ProgressCallback | None = None) -> FlashJob:
        digest = self._checked_digest(component, image, expected_sha256)
        job = FlashJob(self.endpoint.key, component, version, digest, len(image))
        log.info("flash.start bmc=%s component=%s version=%s bytes=%d", self.endpoint.key, component, version,
                 len(image))
        try:
            bounded.run(self.endpoint.key, f"flash {component}",
                        lambda a: self._attempt(a, "flash", self._flash, job, image, progress), driver=self.name,
                        timeout=self.flash_timeout, retries=self.retries, backoff=self.backoff, abandon=self._abandon,
                        retry_safe=False, stall_timeout=self.timeout, lock_timeout=self.timeout)
        except DriverError as e:
            job.state, job.error, job.finished_at = "failed", f"{type(e).__name__}: {e}", time.time()
            e.job = job
            log.warning("flash.failed bmc=%s component=%s error=%s", self.endpoint.key, component, job.error)
            raise
        log.info("flash.done bmc=%s component=%s version=%s seconds=%s", self.endpoint.key, component, version,
                 job.as_dict()["seconds"])
        return job

    def health(self) -> dict:
        def read(a):
            system, _ = self._system(a)
            boot = system.get("Boot") or {}
            device = next((d for d, t in BOOT_TARGETS.items() if t == boot.get("BootSourceOverrideTarget")), "default")
            return {"power": _power(system),
                    "boot_device": device if boot.get("BootSourceOverrideEnabled", "Disabled") != "Disabled" else "default",
                    "boot_mode": {v: k for k, v in BOOT_MODE_NAMES.items()}.get(boot.get("BootSourceOverrideMode"))}
        return self._health_report(lambda: self._run("health", read))

    def close(self) -> None:
        with self._lock:
            root, conn, self._root, self._conn = self._root, self._conn, None, None
        if root is None:
            return
        auth, root._auth = root._auth, None  # sushy's __del__ would log out again, from the GC
        # DELETE the session (sushy's auth.close), waited for a second at most, like IPMI's logout
        future = bounded.POOL.submit(auth.close)
        try:
            future.result(timeout=1.0)
        except Exception as e:  # a failed logout only leaves a session for the BMC to time out
            log.debug("redfish.logout_failed bmc=%s error=%s", self.endpoint.key, e)
        conn.close()

    # -- running ---------------------------------------------------------------------------------------

    def _run(self, what: str, fn, *, retry_safe: bool = True):
        return bounded.run(self.endpoint.key, what, lambda a: self._attempt(a, what, fn), driver=self.name,
                           timeout=self.timeout, retries=self.retries, backoff=self.backoff, abandon=self._abandon,
                           retry_safe=retry_safe)

    def _attempt(self, a: bounded.Attempt, what: str, fn, *args):
        try:
            self._login(a)
            self._root._conn._response_callback = lambda _r: _answered(a)
            return fn(a, *args)
        except DriverError:
            raise
        except Exception as e:
            err = redfish_http.translate(e, self.endpoint.key, answered=a.answered, what=what)
            if isinstance(err, (BmcUnreachable, BmcTimeout)):
                self._forget()  # the connection may be half-dead: start the next try afresh
            raise err from None

    def _login(self, a: bounded.Attempt) -> sushy.Sushy:
        with self._lock:
            if self._root is not None:
                a.session = self._root
                return self._root
        ep = self.endpoint
        conn = redfish_http.connector(ep.address, ep.port, ca_bundle=self.ca_bundle, timeout=self.timeout)
        conn._response_callback = lambda _r: _answered(a)
        auth = sushy.auth.SessionOrBasicAuth(username=ep.username, password=ep.password)
        # GET the service root, then POST a session (DSP0266 §13.3.4), or Basic if that fails
        root = sushy.Sushy(self.base_url, auth=auth, connector=conn)
        a.check()
        with self._lock:
            self._root, self._conn = root, conn
        a.session = root
        return root

    def _abandon(self, a: bounded.Attempt) -> None:
        """The caller gave up on this attempt: its connections must not be reused."""
        with self._lock:
            if self._root is a.session:
                self._root, self._conn = None, None
        if a.session is not None:
            _drop(a.session)

    def _forget(self) -> None:
        with self._lock:
            root, self._root, self._conn = self._root, None, None
        if root is not None:
            _drop(root)

    # -- reading ---------------------------------------------------------------------------------------

    def _get(self, a, path: str) -> dict:
        a.check()
        r = self._root._conn.get(path)
        a.progressed()
        return r.json()

    def _system(self, a) -> tuple[dict, str | None]:
        """The ComputerSystem read now, as JSON (sushy's typed resource parsed every field of it, a
        few ms of CPU per read), and its ETag."""
        path = self._paths.get("system")
        if path is None:
            path = self._first_member(a, "Systems")
            if path is None:
                raise Unsupported(f"{self.endpoint.key}: the Redfish service lists no ComputerSystem")
            self._paths["system"] = path
        a.check()
        r = self._root._conn.get(path)
        a.progressed()
        return r.json(), r.headers.get("ETag")

    def _reset(self, a, system: dict, kind: str) -> None:
        """ComputerSystem.Reset with ResetType `kind` (DSP0268 ResetType), if the BMC offers it."""
        action = (system.get("Actions") or {}).get("#ComputerSystem.Reset") or {}
        allowed = action.get("ResetType@Redfish.AllowableValues")
        if not action.get("target") or (allowed is not None and kind not in allowed):
            raise Unsupported(f"{self.endpoint.key}: the BMC offers no ComputerSystem.Reset {kind} ({allowed})")
        a.check()
        self._root._conn.post(action["target"], data={"ResetType": kind})

    def _update_service_path(self, a) -> str:
        path = self._paths.get("update")
        if path is None:
            doc = self._root.json.get("UpdateService") or {}
            if "@odata.id" not in doc:
                raise Unsupported(f"{self.endpoint.key}: the Redfish service has no UpdateService")
            path = self._paths["update"] = doc["@odata.id"]
        return path

    def _inventory(self, a) -> dict[str, dict]:
        """{component: FirmwareInventory member} read now; Manager/BIOS versions where the BMC has none."""
        return self._inventory_and_service(a)[0]

    def _inventory_and_service(self, a) -> tuple[dict[str, dict], dict]:
        """`_inventory`, and the UpdateService document read on the way; notes which components the
        BMC can flash out of band (for supports_oob_flash)."""
        service = self._get(a, self._update_service_path(a))
        inv_path = (service.get("FirmwareInventory") or {}).get("@odata.id")
        members: list[dict] = []
        if inv_path:
            expand = ((self._root.json.get("ProtocolFeaturesSupported") or {}).get("ExpandQuery") or {})
            doc = self._get(a, inv_path + ("?$expand=." if expand.get("NoLinks") else ""))
            for m in doc.get("Members", []):
                members.append(m if "Version" in m else self._get(a, m["@odata.id"]))
        found = {}
        for m in members:
            component = self._component_of(m)
            if component and m.get("Version"):
                found.setdefault(component, m)
        if not members:  # no FirmwareInventory (e.g. sushy-emulator): the versions every BMC reports
            system, _ = self._system(a)
            if system.get("BiosVersion"):
                found["bios"] = {"Version": system["BiosVersion"]}
            manager = self._first_member(a, "Managers")
            version = self._get(a, manager).get("FirmwareVersion") if manager else None
            if version:
                found["bmc"] = {"Version": version}
        can_flash = bool(simple_update_target(service) or service.get("MultipartHttpPushUri"))
        self._flashable = {c for c, m in found.items()
                           if can_flash and m.get("Updateable", True) and m.get("@odata.id")}
        return found, service

    def _first_member(self, a, collection: str) -> str | None:
        """The first member of the service root's `collection` (read as JSON: sushy's typed
        collection resource parsed every field of it, more CPU than the request)."""
        path = (self._root.json.get(collection) or {}).get("@odata.id")
        members = sorted(m["@odata.id"] for m in (self._get(a, path).get("Members") or [])
                         if isinstance(m, dict) and "@odata.id" in m) if path else []
        return members[0] if members else None

    def _component_of(self, member: dict) -> str | None:
        """Which of our components a FirmwareInventory member is: by the manifest's SoftwareId
        mapping, or without one, by a SoftwareId or Id that is a component's name."""
        if self.software_ids:
            return next((c for c, sw in self.software_ids.items() if sw == member.get("SoftwareId")), None)
        for name in (member.get("SoftwareId"), member.get("Id")):
            if name and str(name).lower() in _COMPONENTS:
                return str(name).lower()
        return None

    def _wait_power(self, a, wanted: str) -> None:
        deadline = time.monotonic() + self.timeout
        while True:
            if _power(self._system(a)[0]) == wanted:
                return
            if time.monotonic() > deadline:
                raise BmcTimeout(f"{self.endpoint.key}: power is not {wanted} {self.timeout:.0f}s after the request")
            time.sleep(self.poll_interval)

    def _cycle(self, a) -> None:
        system, _ = self._system(a)
        if _power(system) == "off":
            a.committed = True
            self._reset(a, system, "On")
            self._wait_power(a, "on")
        else:
            action = (system.get("Actions") or {}).get("#ComputerSystem.Reset") or {}
            allowed = action.get("ResetType@Redfish.AllowableValues") or RESTARTS
            kind = next((k for k in RESTARTS if k in allowed), "ForceRestart")
            a.committed = True
            self._reset(a, system, kind)  # accepted: the server restarts; its power state stays On

_COMPONENTS = ("bmc", "bios", "nic", "raid", "cpld", "psu", "disk", "gpu")


def _power(system: dict) -> str:
    return "on" if system.get("PowerState") in ("On", "PoweringOn") else "off"


def _drop(root: sushy.Sushy) -> None:
    """Stop using a login: close its connection; its session is left for the BMC to time out (sushy
    would otherwise log out from its __del__, on whichever thread the garbage collector runs)."""
    root._auth = None
    root._conn.close()


def _answered(a: bounded.Attempt) -> None:
    a.answered = True
    a.progressed()
