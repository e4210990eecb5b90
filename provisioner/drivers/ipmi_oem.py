"""OEM extensions of the IPMI driver, chosen by the manufacturer a BMC names in its Get Device ID.

OEM commands (netfn 2Eh/30h-3Fh) mean something different on every vendor's BMC, and some are
destructive, so the driver sends them only through an extension registered for the BMC's IANA
manufacturer ID. Extensions register under the entry point group "provisioner.ipmi_oem"
(pyproject.toml), like drivers do; an extension is a class with

    manufacturer_id: int
    def firmware_versions(self, send) -> list[ComponentVersion] | None

where send(netfn, command, data) -> answer data (raising our DriverError on a non-zero completion
code). None means "ask the standard way" (PICMG HPM.1 component properties, then Get Device ID).
An extension exists for the versions HPM.1's 6 bytes cannot carry ("7.00.60", "U46-2.1").
"""

from __future__ import annotations

import importlib.metadata
import logging
import threading
from collections.abc import Callable
from typing import Protocol

from provisioner.drivers.base import ComponentVersion

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "provisioner.ipmi_oem"
Send = Callable[[int, int, bytes], bytes]


class OemExtension(Protocol):
    manufacturer_id: int

    def firmware_versions(self, send: Send) -> list[ComponentVersion] | None: ...


_by_manufacturer: dict[int, OemExtension] | None = None
_lock = threading.Lock()


def extension_for(manufacturer_id: int) -> OemExtension | None:
    """The registered extension for this manufacturer, or None. Entry points are read once per process."""
    global _by_manufacturer
    with _lock:
        if _by_manufacturer is None:
            found: dict[int, OemExtension] = {}
            for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
                try:
                    ext = ep.load()()
                    found[int(ext.manufacturer_id)] = ext
                except Exception:  # a broken plugin must not take every BMC read down with it
                    log.exception("ipmi_oem.load_failed entry_point=%s", ep.name)
            _by_manufacturer = found
        return _by_manufacturer.get(manufacturer_id)
