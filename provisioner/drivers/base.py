"""The BMC driver contract: what every driver (fake, ipmi, redfish) can do to one server.

Errors (provisioner.errors), and whether to try again:

    DriverError
      - BmcUnreachable   retryable: no answer from the BMC (wrong address, network, BMC rebooting)
      - BmcBusy          retryable: another operation holds this BMC, or it said "node busy"
      - BmcTimeout       retryable: the BMC answered, then an operation did not finish in time
      - BmcAuthError     fatal: credentials refused
      - Unsupported      fatal: the BMC or this component cannot do this
      - ImageRejected    fatal: the image's digest differs from the release, or the BMC refused it,
                         or after activation the BMC reports another version than the release's

A driver serializes its own operations per BMC (one at a time, across the whole process) and
bounds every call in time: a method returns or raises within the driver's timeout.
"""

from __future__ import annotations

import abc
import hashlib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

COMPONENTS = ("bmc", "bios", "nic", "raid")
POWER_STATES = ("on", "off")
BOOT_DEVICES = ("pxe", "disk", "cdrom", "bios", "default")
# How the server's firmware boots: legacy PC-compatible BIOS or UEFI. The node's spec field
# `firmware` (inventory.yaml) names it; a server set up for one does not PXE-boot when asked for the
# other (IPMI 2.0 §28.13 parameter 5 "BIOS boot type", Redfish BootSourceOverrideMode).
BOOT_MODES = ("bios", "uefi")


@dataclass(frozen=True)
class BmcEndpoint:
    """Where a BMC answers and how to log in. The password never shows in repr or logs."""
    address: str
    port: int
    username: str
    password: str = field(repr=False)
    driver: str = "ipmi"
    # Driver options from the spec (e.g. redfish's ca_bundle, image_server), as sorted (name, value)
    # pairs so the endpoint stays hashable; open_driver passes them to the driver's constructor.
    options: tuple[tuple[str, object], ...] = ()

    @property
    def key(self) -> str:
        return f"{self.address}:{self.port}"


@dataclass(frozen=True)
class ComponentVersion:
    component: str
    version: str
    state: str = "active"   # "active", or "pending" (uploaded, not yet activated)


@dataclass
class FlashJob:
    """Progress and outcome of one out-of-band flash; `progress` callbacks receive it as it moves."""
    bmc: str
    component: str
    version: str
    image_sha256: str
    bytes_total: int
    previous_version: str | None = None
    bytes_sent: int = 0
    blocks: int = 0
    block_size: int = 0
    state: str = "starting"  # starting, uploading, activating, verifying, active, failed
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    error: str | None = None

    def as_dict(self) -> dict:
        d = asdict(self)
        d["seconds"] = round((self.finished_at or time.time()) - self.started_at, 3)
        return d


ProgressCallback = Callable[[FlashJob], None]


class BmcDriver(abc.ABC):
    """One BMC. Create with `driver_class(endpoint, **options)`; call close() when done."""

    name: str = "abstract"

    def __init__(self, endpoint: BmcEndpoint):
        self.endpoint = endpoint

    @abc.abstractmethod
    def power_status(self) -> str:
        """Return "on" or "off".

        Raises BmcUnreachable, BmcTimeout, BmcBusy (retryable) or BmcAuthError (fatal).
        """

    @abc.abstractmethod
    def power_on(self) -> None:
        """Power the server on; a server already on is left alone.

        Raises BmcUnreachable, BmcTimeout, BmcBusy (retryable) or BmcAuthError (fatal).
        """

    @abc.abstractmethod
    def power_off(self) -> None:
        """Power the server off at once (no OS shutdown); a server already off is left alone.

        Raises BmcUnreachable, BmcTimeout, BmcBusy (retryable) or BmcAuthError (fatal).
        """

    @abc.abstractmethod
    def power_cycle(self) -> None:
        """Restart the server (off then on); a server that is off is powered on.

        Not retried once the BMC accepted the request, so one call is at most one restart.
        Raises BmcUnreachable, BmcTimeout, BmcBusy (retryable) or BmcAuthError (fatal).
        """

    @abc.abstractmethod
    def set_one_time_boot(self, device: str = "pxe", *, mode: str) -> None:
        """Make the next boot, and only the next one, start from `device` (see BOOT_DEVICES) in boot
        `mode` ("bios" or "uefi", see BOOT_MODES): the node's own firmware mode, from its spec.

        Raises Unsupported (fatal) for an unknown device or mode, or a mode the BMC cannot ask for;
        BmcUnreachable, BmcTimeout, BmcBusy (retryable) or BmcAuthError (fatal).
        """

    @abc.abstractmethod
    def firmware_inventory(self) -> dict[str, str]:
        """Read the active firmware versions from the BMC now: {"bmc": "2.1.0", "bios": ...}.

        Never cached: every call asks the BMC. Raises BmcUnreachable, BmcTimeout, BmcBusy
        (retryable) or BmcAuthError (fatal).
        """

    def firmware_versions(self) -> list[ComponentVersion]:
        """Active and pending versions, where the BMC can tell pending ones apart."""
        return [ComponentVersion(c, v) for c, v in self.firmware_inventory().items()]

    @abc.abstractmethod
    def supports_oob_flash(self, component: str) -> bool:
        """Whether this BMC can flash `component` itself (out of band).

        Raises BmcUnreachable, BmcTimeout, BmcBusy (retryable) or BmcAuthError (fatal).
        """

    @abc.abstractmethod
    def flash(self, component: str, image: bytes, expected_sha256: str, version: str,
              progress: ProgressCallback | None = None) -> FlashJob:
        """Write `image` to `component`, activate it, and verify by a fresh inventory read.

        Steps: check sha256(image) == expected_sha256 before a single byte is sent; start the
        upgrade; upload; poll; activate; read the inventory again. Returns the finished FlashJob
        (state "active"); a DriverError raised on the way carries the failed one as `.job`.
        Raises ImageRejected (fatal) if the digest differs, if the BMC refuses the image, or if
        after activation the BMC reports a version other than `version`; Unsupported (fatal) if the
        component cannot be flashed out of band; BmcUnreachable or BmcTimeout (retryable; the old
        version is still active and flashing again starts over) if the BMC stops answering, e.g.
        because it lost power mid-upload; BmcBusy (retryable); BmcAuthError (fatal).
        """

    @abc.abstractmethod
    def health(self) -> dict:
        """A quick check: {"ok": bool, "power": ..., "boot_device": ..., "error": ...}.

        Never raises DriverError: an unreachable BMC or refused credentials are reported with
        ok=False and the error's class name and message.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Log out and release the session; the driver can still be used (it logs in again)."""

    def _health_report(self, read: Callable[[], dict]) -> dict:
        """What health() answers around `read` (the driver's own quick reads, under its deadline):
        ok with the read's fields and its latency, or ok=False with the error; never DriverError."""
        from provisioner.errors import DriverError

        started = time.monotonic()
        try:
            out = read()
        except DriverError as e:
            return {"ok": False, "driver": self.name, "bmc": self.endpoint.key,
                    "error": f"{type(e).__name__}: {e}", "retryable": e.retryable}
        return {"ok": True, "driver": self.name, "bmc": self.endpoint.key,
                "latency_ms": round((time.monotonic() - started) * 1000, 1), **out}

    def _checked_mode(self, mode: str) -> str:
        """`mode` if it is a boot mode this contract knows, else Unsupported (before any request)."""
        from provisioner.errors import Unsupported

        if mode not in BOOT_MODES:
            raise Unsupported(f"{self.endpoint.key}: boot mode {mode!r} is unknown; expected one of "
                              f"{', '.join(BOOT_MODES)}")
        return mode

    def _checked_digest(self, component: str, image: bytes, expected_sha256: str) -> str:
        """sha256 of `image`, or ImageRejected if it differs from the release's: called before any byte is sent."""
        from provisioner.errors import ImageRejected

        digest = hashlib.sha256(image).hexdigest()
        if digest != expected_sha256.strip().lower():
            raise ImageRejected(f"{self.endpoint.key}: {component} image sha256 is {digest}, the release "
                                f"says {expected_sha256}; refusing to send it")
        return digest

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.endpoint.key}>"
