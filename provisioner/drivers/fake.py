"""A deterministic in-memory BMC driver: the same contract as the real ones, no network, no clock.

State lives in a class-level dict keyed by BMC address, so a test (or the demo) can seed a BMC,
drive it through any number of FakeDriver objects, and inspect what happened:

    FakeDriver.seed("10.0.0.5", firmware={"bios": "1.0.0"}, password="secret")
    FakeDriver(endpoint).flash("bios", image, sha, "1.1.0")
    FakeDriver.bmcs["10.0.0.5"].uploads      # [{"component": "bios", "version": "1.1.0", ...}]

An unseeded address appears on first use with the endpoint's credentials and DEFAULT_FIRMWARE.
Firmware images are understood like the simulator does (provisioner.lab.hpm): a SIMFW1 payload
installs the version it names, an HPM.1 image the payload of its record for the component; any
other bytes install the version the caller asked for.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import ClassVar

from provisioner.drivers import hpm1
from provisioner.drivers.base import (
    BOOT_DEVICES,
    COMPONENTS,
    BmcDriver,
    BmcEndpoint,
    ComponentVersion,
    FlashJob,
    ProgressCallback,
)
from provisioner.errors import BmcAuthError, BmcBusy, BmcUnreachable, ImageRejected, Unsupported

DEFAULT_FIRMWARE = {"bmc": "1.0.0", "bios": "1.0.0", "nic": "1.0.0", "raid": "1.0.0"}


@dataclass
class FakeBmc:
    username: str
    password: str
    firmware: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_FIRMWARE))
    oob_components: set[str] = field(default_factory=lambda: set(COMPONENTS))
    power: str = "off"
    boot_override: str | None = None      # the one-time boot device, until the next boot
    last_boot_device: str | None = None
    boots: int = 0
    uploads: list[dict] = field(default_factory=list)   # every image that reached the BMC
    log: list[dict] = field(default_factory=list)
    # faults
    unreachable: bool = False
    busy: bool = False
    power_loss_during_flash: bool = False  # one shot: the next flash dies mid-upload

    def record(self, **event) -> None:
        self.log.append({"event": event.pop("event"), **event})


class FakeDriver(BmcDriver):
    """In-memory BMC; options accepted by real drivers (timeout, retries, ...) are ignored."""

    name = "fake"
    bmcs: ClassVar[dict[str, FakeBmc]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, endpoint: BmcEndpoint, **_options):
        super().__init__(endpoint)

    @classmethod
    def seed(cls, address: str, *, username: str = "admin", password: str = "password",
             firmware: dict[str, str] | None = None, **attrs) -> FakeBmc:
        """Create (or replace) the BMC at `address`."""
        bmc = FakeBmc(username, password, dict(firmware if firmware is not None else DEFAULT_FIRMWARE), **attrs)
        with cls._lock:
            cls.bmcs[address] = bmc
        return bmc

    @classmethod
    def reset(cls) -> None:
        with cls._lock:
            cls.bmcs.clear()

    # -- the contract ----------------------------------------------------------------------------------

    def power_status(self) -> str:
        return self._bmc().power

    def power_on(self) -> None:
        bmc = self._bmc()
        if bmc.power == "off":
            bmc.power = "on"
            bmc.record(event="power", power="on")
            self._boot(bmc)

    def power_off(self) -> None:
        bmc = self._bmc()
        if bmc.power == "on":
            bmc.power = "off"
            bmc.record(event="power", power="off")

    def power_cycle(self) -> None:
        bmc = self._bmc()
        if bmc.power == "off":
            bmc.power = "on"
        bmc.record(event="power", power="cycle")
        self._boot(bmc)

    def set_one_time_boot(self, device: str = "pxe", *, mode: str) -> None:
        uefi = mode == "uefi"
        if device not in BOOT_DEVICES:
            raise Unsupported(f"boot device {device!r} is unknown; expected one of {', '.join(BOOT_DEVICES)}")
        bmc = self._bmc()
        bmc.boot_override = None if device == "default" else device
        bmc.record(event="boot_override", device=bmc.boot_override, uefi=uefi)

    def firmware_inventory(self) -> dict[str, str]:
        return dict(self._bmc().firmware)

    def firmware_versions(self) -> list[ComponentVersion]:
        return [ComponentVersion(c, v) for c, v in self._bmc().firmware.items()]

    def supports_oob_flash(self, component: str) -> bool:
        return component in self._bmc().oob_components

    def flash(self, component: str, image: bytes, expected_sha256: str, version: str,
              progress: ProgressCallback | None = None) -> dict:
        digest = self._checked_digest(component, image, expected_sha256)
        bmc = self._bmc()
        if component not in bmc.oob_components or component not in bmc.firmware:
            raise Unsupported(f"{self.endpoint.key}: the BMC cannot flash {component!r} out of band")
        job = FlashJob(self.endpoint.key, component, version, digest, len(image),
                       previous_version=bmc.firmware[component], block_size=len(image), state="uploading")
        payload, installs = _understand(image, component, version, self.endpoint.key)
        if bmc.power_loss_during_flash:
            bmc.power_loss_during_flash = False
            bmc.power = "off"
            bmc.record(event="flash_aborted", component=component, reason="power lost during upload")
            raise BmcUnreachable(f"{self.endpoint.key}: the BMC stopped answering during the upload of "
                                 f"{component}; {job.previous_version} is still active; flash again")
        bmc.uploads.append({"component": component, "version": installs, "bytes": len(payload),
                            "sha256": digest})
        job.bytes_sent, job.blocks = len(image), 1
        _notify(progress, job)
        job.state = "activating"
        _notify(progress, job)
        bmc.firmware[component] = installs
        bmc.record(event="activated", component=component, version=installs, previous=job.previous_version)
        job.state = "verifying"
        _notify(progress, job)
        if bmc.firmware[component] != version:
            raise ImageRejected(f"{self.endpoint.key}: after activation {component} reports {installs!r}, "
                                f"the release says {version!r}")
        job.state, job.finished_at = "active", time.time()
        _notify(progress, job)
        return job.as_dict()

    def health(self) -> dict:
        try:
            bmc = self._bmc()
        except (BmcUnreachable, BmcAuthError, BmcBusy) as e:
            return {"ok": False, "driver": self.name, "bmc": self.endpoint.key,
                    "error": f"{type(e).__name__}: {e}", "retryable": e.retryable}
        return {"ok": True, "driver": self.name, "bmc": self.endpoint.key, "power": bmc.power,
                "boot_device": bmc.boot_override or "default"}

    def close(self) -> None:
        pass

    # -- internals -------------------------------------------------------------------------------------

    def _bmc(self) -> FakeBmc:
        ep = self.endpoint
        with self._lock:
            bmc = self.bmcs.get(ep.address)
            if bmc is None:
                bmc = self.bmcs[ep.address] = FakeBmc(ep.username, ep.password)
        if bmc.unreachable:
            raise BmcUnreachable(f"{ep.key}: no answer from the BMC (fake: unreachable)")
        if (ep.username, ep.password) != (bmc.username, bmc.password):
            raise BmcAuthError(f"{ep.key}: credentials refused for user {ep.username!r}")
        if bmc.busy:
            raise BmcBusy(f"{ep.key}: the BMC is busy (fake)")
        return bmc

    @staticmethod
    def _boot(bmc: FakeBmc) -> None:
        bmc.last_boot_device = bmc.boot_override or "disk"
        bmc.boot_override = None
        bmc.boots += 1


def _understand(image: bytes, component: str, version: str, key: str) -> tuple[bytes, str]:
    """(payload, version it installs) the way the simulated BMC reads an image."""
    from provisioner.lab import hpm

    payload = image
    if image.startswith(hpm1.IMAGE_SIGNATURE):
        try:
            upload = hpm1.parse_image(image).upload_for(hpm.COMPONENTS.index(component))
        except ValueError as e:
            raise ImageRejected(f"{key}: {component} image is not a valid HPM.1 image: {e}") from None
        if upload is None:
            raise ImageRejected(f"{key}: the HPM.1 image has no upload record for {component}")
        payload = upload.data
    if payload.startswith(hpm.SIMFW_MAGIC):
        try:
            meta = hpm.parse_sim_payload(payload)
        except ValueError as e:
            raise ImageRejected(f"{key}: the BMC refused the {component} image: {e}") from None
        if meta["component"] != component:
            raise ImageRejected(f"{key}: the BMC refused the image: it is for {meta['component']!r}, "
                                f"not {component!r}")
        return payload, meta["version"]
    return payload, version


def _notify(progress, job: FlashJob) -> None:
    if progress is not None:
        progress(job)
