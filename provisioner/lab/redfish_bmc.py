"""One simulated Redfish BMC: power, boot override, sessions, firmware updates run as tasks.

The HTTP face is provisioner.lab.redfish_app; the site (provisioner.lab.redfish_site) owns these
objects and their state dicts, which have the same shape as the IPMI BMCs' (SimSite), so the host
behind a Redfish BMC netboots exactly as behind an IPMI one. Everything here runs with the site's
lock held, except the update worker, which takes it for each change.

Firmware updates (DSP0268 UpdateService): the image arrives by SimpleUpdate (the BMC downloads
ImageURI over HTTP, checks the sha256 the artifact URL names, if it names one) or by multipart
push; it must be a SIMFW1 payload (or an HPM.1 image holding one) for this model and component.
A BIOS image is staged and activated at the next host boot (Redfish ApplyTime OnReset, as real
BMCs do for system ROMs); other components activate at once.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import re
import secrets
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import TYPE_CHECKING

from provisioner.drivers import hpm1
from provisioner.lab import hpm
from provisioner.lab.sim_bmc import LOG_LIMIT, Faults

if TYPE_CHECKING:
    from provisioner.lab.redfish_site import RedfishSite

log = logging.getLogger("provisioner.lab.redfish")

TASK_LIMIT = 50
DOWNLOAD_TIMEOUT_S = 10.0
ARTIFACT_DIGEST = re.compile(r"/sha256/([0-9a-f]{64})(?:$|[?#])")
# Components whose new image waits for the host's next boot (ApplyTime OnReset)
STAGED_COMPONENTS = ("bios",)
# DMTF message registries: Update 1.0 and Base 1.x
MSG_TRANSFER_FAILED = "Update.1.0.TransferFailed"
MSG_VERIFY_FAILED = "Update.1.0.VerificationFailed"
MSG_ACTIVATE_FAILED = "Update.1.0.ActivateFailed"
MSG_SUCCESS = "Update.1.0.UpdateSuccessful"
MSG_AWAIT_RESET = "Base.1.8.ResetRequired"


@dataclass
class RedfishFaults(Faults):
    """The IPMI BMCs' faults, plus two of an update's."""
    task_fails: bool = False               # the next update task ends in Exception (one shot)
    power_loss_in_update: bool = False     # the BMC loses power while applying the next update (one shot)


@dataclass
class Task:
    id: str
    state: str = "New"                     # Redfish TaskState: New, Running, Completed, Exception
    status: str = "OK"                     # Redfish Health: OK, Warning, Critical
    percent: int = 0
    messages: tuple[tuple[str, str], ...] = ()   # (MessageId, Message)
    started: float = 0.0
    ended: float | None = None

    def finish(self, state: str, message_id: str, text: str) -> None:
        self.state, self.status = state, "OK" if state == "Completed" else "Critical"
        self.percent = 100 if state == "Completed" else self.percent
        self.messages = (*self.messages, (message_id, text))
        self.ended = time.time()


class RedfishBmc:
    def __init__(self, node: dict, state: dict, site: RedfishSite):
        self.node, self.state, self.site = node, state, site
        self.name, self.address, self.port = node["name"], node["bmc_address"], int(node["bmc_port"])
        self.model = node.get("model")
        # SoftwareId per component, as the vendor names them (the manifest's redfish mapping)
        self.software_ids: dict[str, str] = dict(node.get("software_ids") or {})
        self.faults = RedfishFaults()
        self.down_until = 0.0
        self.sessions: dict[str, str] = {}    # token -> session id
        self._session_ids = itertools.count(1)
        self.tasks: dict[str, Task] = {}
        self._task_ids = itertools.count(1)

    # -- availability and auth ------------------------------------------------------------------------

    def answering(self) -> bool:
        return not self.faults.unreachable and time.monotonic() >= self.down_until

    def password_ok(self, username: str, password: str) -> bool:
        expected = self.node["password"] + ("-rejected" if self.faults.wrong_password else "")
        return secrets.compare_digest(username.encode(), self.node["username"].encode()) and \
            secrets.compare_digest(password.encode(), expected.encode())

    def login(self) -> tuple[str, str]:
        token, sid = secrets.token_hex(16), str(next(self._session_ids))
        self.sessions[token] = sid
        return sid, token

    def logout(self, sid: str) -> bool:
        for token, s in list(self.sessions.items()):
            if s == sid:
                del self.sessions[token]
                return True
        return False

    def record(self, event: dict) -> None:
        event = {"at": round(time.time(), 3), **event}
        self.state["log"].append(event)
        del self.state["log"][:-LOG_LIMIT]
        self.site.mark_dirty(self.name)

    # -- power and boot (same semantics as provisioner.lab.sim_bmc.SimBmc) ----------------------------

    def reset(self, kind: str) -> bool:
        """ComputerSystem.Reset; False for a ResetType this BMC does not take."""
        power = self.state["power"]
        if kind in ("On", "ForceOn"):
            if power == "off":
                self._set_power("on", kind)
                self._boot()
        elif kind in ("ForceOff", "GracefulShutdown"):
            self._set_power("off", kind)
        elif kind in ("ForceRestart", "GracefulRestart", "PowerCycle"):
            if power == "off":
                if kind != "PowerCycle":
                    return True  # a restart of a server that is off does nothing (DSP0268 ResetType)
                self._set_power("on", kind)
            else:
                self.record({"event": "power", "power": "cycle", "reason": kind})
            self._boot()
        else:
            return False
        return True

    def set_boot(self, target: str | None, enabled: str | None, mode: str | None) -> None:
        current = self.state["boot_override"] or {}
        target = target if target is not None else {"pxe": "Pxe", "disk": "Hdd", "cdrom": "Cd",
                                                    "bios": "BiosSetup"}.get(current.get("device"), "None")
        enabled = enabled or ("Continuous" if current.get("persistent") else "Once" if current else "Disabled")
        efi = mode == "UEFI" if mode is not None else current.get("efi", True)
        device = {"Pxe": "pxe", "Hdd": "disk", "Cd": "cdrom", "BiosSetup": "bios"}.get(target)
        if enabled == "Disabled" or device is None:
            self.state["boot_override"] = None
        else:
            self.state["boot_override"] = {"device": device, "persistent": enabled == "Continuous", "efi": efi}
        self.record({"event": "boot_override", "override": self.state["boot_override"]})

    def _set_power(self, power: str, why: str) -> None:
        if self.state["power"] != power:
            self.state["power"] = power
            self.record({"event": "power", "power": power, "reason": why})

    def _boot(self) -> None:
        for component, fw in self.state["firmware"].items():  # staged images activate at POST
            if fw.get("pending"):
                previous, fw["active"], fw["pending"] = fw["active"], fw["pending"], None
                self.record({"event": "activated", "component": component, "version": fw["active"],
                             "previous": previous, "at_reset": True})
        override = self.state["boot_override"]
        device = override["device"] if override else "disk"
        if override and not override.get("persistent"):
            self.state["boot_override"] = None
        self.state["boots"] += 1
        self.state["last_boot"] = {"device": device, "at": round(time.time(), 3),
                                   "efi": bool(override.get("efi")) if override else None}
        self.site.mark_dirty(self.name)
        self.site.notify_power_on(self.name, device)

    def power_lost(self) -> None:
        """AC power lost: dark for outage_s, sessions and running tasks gone, host off."""
        self.reboot("power lost", self.faults.outage_s)
        self._set_power("off", "power lost")

    def reboot(self, why: str, dark_s: float) -> None:
        self.sessions.clear()
        for t in self.tasks.values():
            if t.state in ("New", "Running"):
                t.finish("Exception", MSG_ACTIVATE_FAILED, f"interrupted: {why}")
        self.down_until = time.monotonic() + dark_s
        self.record({"event": "bmc_reboot", "reason": why})
        self.site.drop_connections(self.address)

    # -- firmware --------------------------------------------------------------------------------------

    def software_id(self, component: str) -> str:
        return self.software_ids.get(component, component)

    def component_of(self, target: str) -> str | None:
        """The component a Targets entry (a FirmwareInventory URI) names."""
        member = target.rstrip("/").rsplit("/", 1)[-1]
        return member if member in self.state["firmware"] else None

    def start_update(self, *, image_uri: str | None = None, image: bytes | None = None,
                     targets: list[str] = (), how: str) -> Task:
        task = Task(str(next(self._task_ids)), state="Running", started=time.time())
        self.tasks[task.id] = task
        for old in sorted(self.tasks, key=int)[:-TASK_LIMIT]:
            del self.tasks[old]
        self.record({"event": "upload_started", "how": how, "task": task.id,
                     "image_uri": image_uri, "bytes": len(image) if image is not None else None})
        threading.Thread(target=self._update, args=(task, image_uri, image, list(targets), how),
                         name=f"redfish-update-{self.name}", daemon=True).start()
        return task

    def _update(self, task: Task, image_uri: str | None, image: bytes | None, targets: list[str], how: str) -> None:
        lock = self.site.lock
        if image is None:
            try:
                image = _download(image_uri)
            except (OSError, urllib.error.URLError, ValueError) as e:
                with lock:
                    task.finish("Exception", MSG_TRANSFER_FAILED, f"cannot download {image_uri}: {e}")
                    self.record({"event": "rejected", "task": task.id, "reason": f"download failed: {e}"})
                return
            m = ARTIFACT_DIGEST.search(image_uri)
            if m and hashlib.sha256(image).hexdigest() != m.group(1):
                with lock:
                    task.finish("Exception", MSG_VERIFY_FAILED, "the image's sha256 differs from the one its URI names")
                    self.record({"event": "rejected", "task": task.id, "reason": "sha256 mismatch"})
                return
        with lock:
            task.percent = 30
            try:
                component, version = self._understand(image, targets)
            except ValueError as e:
                task.finish("Exception", MSG_VERIFY_FAILED, str(e))
                self.record({"event": "rejected", "task": task.id, "reason": str(e)})
                return
            self.record({"event": "uploaded", "component": component, "version": version, "how": how,
                         "bytes": len(image), "sha256": hashlib.sha256(image).hexdigest()})
            task.percent = 60
        time.sleep(self.site.activation_s)
        with lock:
            if task.state != "Running":
                return  # the BMC rebooted meanwhile
            if self.faults.power_loss_in_update:
                self.faults.power_loss_in_update = False
                self.power_lost()
                return
            if self.faults.task_fails:
                self.faults.task_fails = False
                task.finish("Exception", MSG_ACTIVATE_FAILED, f"activating {component} {version} failed")
                self.record({"event": "rejected", "task": task.id, "reason": "activation failed (fault)"})
                return
            fw = self.state["firmware"][component]
            if component in STAGED_COMPONENTS:
                fw["pending"] = version
                task.finish("Completed", MSG_AWAIT_RESET,
                            f"{component} {version} is staged; it activates when the system restarts")
                self.record({"event": "staged", "component": component, "version": version})
            else:
                previous, fw["active"], fw["pending"] = fw["active"], version, None
                task.finish("Completed", MSG_SUCCESS, f"{component} updated to {version}")
                self.record({"event": "activated", "component": component, "version": version,
                             "previous": previous})

    def _understand(self, image: bytes, targets: list[str]) -> tuple[str, str]:
        """(component, version) the image installs here; ValueError if this BMC refuses it."""
        wanted = [self.component_of(t) for t in targets]
        if None in wanted:
            raise ValueError(f"unknown update target(s) {targets}")
        payload = image
        if image.startswith(hpm1.IMAGE_SIGNATURE):
            try:
                parsed = hpm1.parse_image(image)
            except ValueError as e:
                raise ValueError(f"not a valid HPM.1 image: {e}") from None
            names = wanted or [hpm.COMPONENTS[u.component_id] for u in parsed.uploads]
            upload = parsed.upload_for(hpm.COMPONENTS.index(names[0]))
            if upload is None:
                raise ValueError(f"the HPM.1 image has no record for {names[0]}")
            payload = upload.data
        meta = hpm.parse_sim_payload(payload)
        if wanted and meta["component"] not in wanted:
            raise ValueError(f"the image is for {meta['component']!r}, the update targets {', '.join(wanted)}")
        if meta["component"] not in self.state["firmware"]:
            raise ValueError(f"this BMC has no component {meta['component']!r}")
        if self.model and meta.get("model") and meta["model"] != self.model:
            raise ValueError(f"the image is for model {meta['model']!r}, this server is {self.model!r}")
        return meta["component"], meta["version"]


def _download(uri: str | None) -> bytes:
    if not uri or not uri.startswith(("http://", "https://")):
        raise ValueError(f"ImageURI {uri!r} is not an HTTP URL")
    with urllib.request.urlopen(uri, timeout=DOWNLOAD_TIMEOUT_S) as r:  # noqa: S310  (http(s) only, checked)
        return r.read()
