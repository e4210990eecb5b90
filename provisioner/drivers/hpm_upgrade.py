"""One PICMG HPM.1 firmware upgrade of one component, as a state machine over its steps. No I/O.

The driver asks `request()` what to send, sends it, and hands the completion code and data to
`answer()`; after activation it reads the component's version afresh and hands it to `verified()`.
A refusal raises our error at once; a BMC that stops answering is turned into the right error by
`no_answer()`. Steps (HPM.1 §3):

    initiate   Initiate Upgrade Action, "upload for upgrade" (§3.7.2)       -> committed from here
    upload     Upload Firmware Block, numbered mod 256 (§3.7.3); a block the BMC finds too long
               (C7h/C8h/CAh) is halved, down to 16 bytes, until one is taken
    finish     Finish Firmware Upload with the total length (§3.7.4); the BMC validates the image
    activate   Activate Firmware (§3.7.6)
    verify     the driver's fresh read of the active version must equal the release's
    done

Any command may answer 80h "in progress" (a long-duration command, §3.4): then Get Upgrade Status
is polled every `poll_interval` until its last completion code is no longer 80h, for at most
`command_timeout` seconds (activation: `activation_timeout`, from the BMC's upgrade timeout).
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass

from provisioner.drivers import hpm1
from provisioner.drivers.base import FlashJob
from provisioner.errors import BmcBusy, BmcTimeout, BmcUnreachable, DriverError, ImageRejected

UPLOAD_TOO_LONG = (0xC7, 0xC8, 0xCA)   # request data length invalid / exceeded / too long
SMALLEST_BLOCK = 16
CC_NOT_NOW = 0xD5                      # not supported in present state: another upgrade runs

STEPS = ("initiate", "upload", "finish", "activate", "verify", "done")
JOB_STATE = {"initiate": "uploading", "upload": "uploading", "finish": "uploading",
             "activate": "activating", "verify": "verifying", "done": "active"}


@dataclass(frozen=True)
class Request:
    """One PICMG request (netfn 2Ch) to send, `wait` seconds from now."""
    command: int
    data: bytes
    wait: float = 0.0


def payload_for(image: bytes, component_id: int, key: str, component: str) -> bytes:
    """The bytes to upload: the component's record of an HPM.1 image, or the image itself."""
    if not image.startswith(hpm1.IMAGE_SIGNATURE):
        return image
    try:
        parsed = hpm1.parse_image(image)
    except ValueError as e:
        raise ImageRejected(f"{key}: {component} image is not a valid HPM.1 image: {e}") from None
    upload = parsed.upload_for(component_id)
    if upload is None:
        raise ImageRejected(f"{key}: the HPM.1 image has no upload record for {component} "
                            f"(component id {component_id})")
    return upload.data


class HpmUpgrade:
    """Progress of one upgrade; `job` (its FlashJob) is kept up to date as the steps go."""

    def __init__(self, job: FlashJob, component_id: int, payload: bytes, *, block_size: int = 1024,
                 command_timeout: float = 60.0, activation_timeout: float = 60.0, poll_interval: float = 0.1):
        self.job, self.component_id, self.payload = job, component_id, payload
        self.block = max(SMALLEST_BLOCK, block_size)
        self.command_timeout, self.activation_timeout = command_timeout, activation_timeout
        self.poll_interval = poll_interval
        self.step = "initiate"
        self.committed = False      # the BMC accepted the upgrade: retrying would start another
        self.offset = self.number = 0
        self.confirmed = False      # the BMC took a block: its size is settled
        self._polling_since: float | None = None  # a long-duration command is running
        job.bytes_total = len(payload)
        job.state = JOB_STATE[self.step]

    @property
    def done(self) -> bool:
        return self.step == "done"

    @property
    def key(self) -> str:
        return self.job.bmc

    # -- what to send ----------------------------------------------------------------------------------

    def request(self) -> Request:
        pid = bytes([hpm1.PICMG_ID])
        if self._polling_since is not None:
            return Request(hpm1.GET_UPGRADE_STATUS, pid, self.poll_interval)
        if self.step == "initiate":
            return Request(hpm1.INITIATE_UPGRADE_ACTION,
                           pid + bytes([1 << self.component_id, hpm1.ACTION_UPLOAD_FOR_UPGRADE]))
        if self.step == "upload":
            chunk = self.payload[self.offset:self.offset + self.block]
            return Request(hpm1.UPLOAD_FIRMWARE_BLOCK, pid + bytes([self.number & 0xFF]) + chunk)
        if self.step == "finish":
            return Request(hpm1.FINISH_FIRMWARE_UPLOAD,
                           pid + bytes([self.component_id]) + struct.pack("<I", len(self.payload)))
        if self.step == "activate":
            return Request(hpm1.ACTIVATE_FIRMWARE, pid)
        raise RuntimeError(f"HPM.1 upgrade at step {self.step!r} sends nothing (verify: call verified())")

    # -- what the BMC said -------------------------------------------------------------------------

    def answer(self, code: int, data: bytes, now: float | None = None) -> None:
        """The BMC's answer to the last request(); raises our error if it ends the upgrade."""
        now = time.monotonic() if now is None else now
        if self._polling_since is not None:
            if code:
                raise DriverError(f"{self.key}: Get Upgrade Status failed with code {code:#04x} "
                                  f"during {self.step} of {self.job.component}")
            code = data[2] if len(data) >= 3 else 0
            if code == hpm1.CC_IN_PROGRESS:
                limit = self.activation_timeout if self.step == "activate" else self.command_timeout
                if now - self._polling_since > limit:
                    raise BmcTimeout(f"{self.key}: HPM.1 {self.step} of {self.job.component} still in "
                                     f"progress after {limit:.0f}s")
                return
            self._polling_since = None
        elif code == hpm1.CC_IN_PROGRESS:
            self._polling_since = now
            return
        getattr(self, f"_after_{self.step}")(code)

    def _after_initiate(self, code: int) -> None:
        if code == CC_NOT_NOW:
            raise BmcBusy(f"{self.key}: the BMC is in the middle of another firmware operation")
        if code:
            raise ImageRejected(f"{self.key}: the BMC refused to start an upgrade of {self.job.component} "
                                f"(code {code:#04x})")
        self.committed = True
        self._next("upload" if self.payload else "finish")

    def _after_upload(self, code: int) -> None:
        if code in UPLOAD_TOO_LONG and not self.confirmed and self.block > SMALLEST_BLOCK:
            self.block = max(SMALLEST_BLOCK, self.block // 2)  # send the same block again, shorter
            return
        if code:
            raise BmcUnreachable(f"{self.key}: the BMC dropped the upload of {self.job.component} at block "
                                 f"{self.number} (code {code:#04x}); {self.job.previous_version} is still "
                                 f"active; flash again")
        sent = len(self.payload[self.offset:self.offset + self.block])
        self.confirmed, self.offset, self.number = True, self.offset + sent, self.number + 1
        job = self.job
        job.bytes_sent, job.blocks, job.block_size = self.offset, self.number, self.block
        if self.offset >= len(self.payload):
            self._next("finish")

    def _after_finish(self, code: int) -> None:
        if code in (hpm1.CC_HPM_81, hpm1.CC_HPM_82, hpm1.CC_HPM_83):
            why = "length mismatch" if code == hpm1.CC_HPM_81 else "validation failed"
            raise ImageRejected(f"{self.key}: the BMC refused the {self.job.component} image after upload "
                                f"(code {code:#04x}: {why})")
        if code:
            raise DriverError(f"{self.key}: Finish Firmware Upload failed with code {code:#04x}")
        self._next("activate")

    def _after_activate(self, code: int) -> None:
        if code:
            raise DriverError(f"{self.key}: activation of {self.job.component} failed with code {code:#04x}")
        self._next("verify")

    def verified(self, version: str | None) -> None:
        """The active version the BMC reports now, read afresh after activation."""
        if self.step != "verify":
            raise RuntimeError(f"HPM.1 upgrade at step {self.step!r} has nothing to verify")
        if version != self.job.version:
            raise ImageRejected(f"{self.key}: after activation {self.job.component} reports {version!r}, "
                                f"the release says {self.job.version!r}")
        self.job.finished_at = time.time()
        self._next("done")

    def no_answer(self, detail: str) -> DriverError:
        """The error for a BMC that stopped answering now (lost power, rebooted, network gone)."""
        job, what = self.job, self.job.component
        if self.step in ("activate", "verify"):
            return BmcUnreachable(f"{self.key}: the BMC stopped answering while activating {what} ({detail}); "
                                  f"read its inventory, then flash again if it still runs "
                                  f"{job.previous_version}")
        where = f" at block {self.number}" if self.step == "upload" else ""
        return BmcUnreachable(f"{self.key}: the BMC stopped answering during the {self.step} of {what}{where} "
                              f"({detail}); {job.previous_version} is still active; flash again")

    def _next(self, step: str) -> None:
        self.step = step
        self.job.state = JOB_STATE[step]
