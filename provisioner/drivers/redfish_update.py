"""Flashing through a Redfish UpdateService (DSP0268): the RedfishDriver's `flash` steps.

SimpleUpdate with an ImageURI on our artifact route (the BMC pulls), else a multipart push to
MultipartHttpPushUri (we push); the task monitor until the task ends (DSP0266 §13.2.7); a power
cycle when the task says the image waits for a reset (ApplyTime OnReset); then a fresh inventory
read. A mixin: it uses the driver's login, reads and power cycle.
"""

from __future__ import annotations

import json
import logging
import time

import sushy

from provisioner.drivers.base import FlashJob
from provisioner.errors import BmcTimeout, ImageRejected, Unsupported

log = logging.getLogger("provisioner.drivers.redfish")

TASK_DONE = ("Completed", "Exception", "Killed", "Cancelled", "Interrupted", "Suspended")
# Task messages meaning "staged; activates at the next reset" (Base ResetRequired, Update AwaitToActivate)
AWAITS_RESET = ("ResetRequired", "AwaitToActivate")
TRANSFER_FAILED = ("TransferFailed",)  # Update registry: the BMC could not fetch ImageURI


class UpdateServiceFlash:
    """RedfishDriver._flash and its steps (the driver runs it under bounded.run, holding its BMC)."""

    def _flash(self, a, job: FlashJob, image: bytes, progress) -> None:
        key, component = self.endpoint.key, job.component
        found, service = self._inventory_and_service(a)
        member = found.get(component)
        if member is None or not member.get("@odata.id") or member.get("Updateable") is False:
            raise Unsupported(f"{key}: the BMC cannot flash {component!r} out of band (not an updateable "
                              f"FirmwareInventory member{'; map it in the manifest: redfish.software_ids' if not self.software_ids else ''})")
        job.previous_version = member["Version"]
        simple, push = simple_update_target(service), service.get("MultipartHttpPushUri")
        if not simple and not push:
            raise Unsupported(f"{key}: the UpdateService offers neither SimpleUpdate nor MultipartHttpPushUri")
        _notify(job, progress, "uploading")
        targets = [member["@odata.id"]]
        if simple and self.image_server:
            uri = f"{self.image_server}/artifacts/sha256/{job.image_sha256}"
            a.committed = True
            task = self._await(a, job, progress, self._root._conn.post(
                simple, data={"ImageURI": uri, "TransferProtocol": uri.split(":", 1)[0].upper(), "Targets": targets}))
            if _said(task, TRANSFER_FAILED) and push:
                log.info("flash.push_fallback bmc=%s reason=%s", key, _messages(task))
                _notify(job, progress, "uploading")
                task = self._push(a, job, image, push, targets, progress)
        elif push:
            task = self._push(a, job, image, push, targets, progress)
        else:
            raise Unsupported(f"{key}: the BMC only pulls images (SimpleUpdate) and no image_server is set for it")
        if task.get("TaskState") != "Completed":
            raise ImageRejected(f"{key}: the BMC's update task for {component} ended {task.get('TaskState')}: "
                                f"{_messages(task)}; {job.previous_version} is still active")
        if _said(task, AWAITS_RESET):  # ApplyTime OnReset: staged until the system restarts
            _notify(job, progress, "activating")
            self._cycle(a)
        _notify(job, progress, "verifying")
        found = self._inventory(a).get(component, {}).get("Version")  # a fresh read, never a cached one
        if found != job.version:
            raise ImageRejected(f"{key}: after activation {component} reports {found!r}, the release says {job.version!r}")
        job.finished_at = time.time()
        _notify(job, progress, "active")

    def _push(self, a, job: FlashJob, image: bytes, uri: str, targets: list[str], progress) -> dict:
        params = json.dumps({"Targets": targets, "@Redfish.OperationApplyTime": "Immediate"})
        files = {"UpdateParameters": (None, params, "application/json"),
                 "UpdateFile": (f"{job.component}-{job.version}.bin", image, "application/octet-stream")}
        a.committed = True
        # multipart/form-data (DSP0266 §13.2.7.3): sushy's connector speaks JSON, so its session
        # sends this one request itself, with the same authentication, connection and TLS context
        conn = self._root._conn
        r = conn._session.post(self.base_url + uri if uri.startswith("/") else uri, files=files,
                               timeout=max(self.timeout, 60.0))
        sushy.exceptions.raise_for_response("POST", uri, r)
        job.bytes_sent, job.blocks, job.block_size = len(image), 1, len(image)
        return self._await(a, job, progress, r)

    def _await(self, a, job: FlashJob, progress, response) -> dict:
        """Follow the task (DSP0266 §13.2.7) until it ends; the task resource as last read."""
        a.answered = True
        job.bytes_sent = job.bytes_sent or job.bytes_total
        monitor = response.headers.get("Location")
        try:
            task = response.json() if response.content else {}
        except ValueError:
            task = {}
        path = task.get("@odata.id") or monitor
        if not path:
            if response.status_code in (200, 204):
                return {"TaskState": "Completed", "Messages": []}
            raise Unsupported(f"{self.endpoint.key}: the update was accepted without a task to follow")
        _notify(job, progress, "activating")
        deadline = time.monotonic() + self.flash_timeout
        while task.get("TaskState") not in TASK_DONE:
            if time.monotonic() > deadline:
                raise BmcTimeout(f"{self.endpoint.key}: the update task is still {task.get('TaskState')} after "
                                 f"{self.flash_timeout:.0f}s")
            time.sleep(self.poll_interval)
            task = self._get(a, path)
            percent = task.get("PercentComplete")
            if isinstance(percent, int):
                job.blocks = percent
                _notify(job, progress)
        return task




def simple_update_target(service: dict) -> str | None:
    return ((service.get("Actions") or {}).get("#UpdateService.SimpleUpdate") or {}).get("target")


def _said(task: dict, ids: tuple[str, ...]) -> bool:
    return any(any(i in str(m.get("MessageId", "")) for i in ids) for m in task.get("Messages") or [])


def _messages(task: dict) -> str:
    return "; ".join(f"{m.get('MessageId')}: {m.get('Message')}" for m in task.get("Messages") or []) or "no message"


def _notify(job: FlashJob, progress, state: str | None = None) -> None:
    if state:
        job.state = state
    if progress is not None:
        try:
            progress(job)
        except Exception:
            log.exception("flash.progress_callback_failed component=%s", job.component)
