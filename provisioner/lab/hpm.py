"""The simulated BMC's firmware: SIMFW1 payloads, HPM.1 images, and the HPM.1 upgrade target.

A simulated firmware payload is self-describing, in the format scripts/make_example_spec.py writes
for the example artifacts:

    b"SIMFW1" + JSON {"component": ..., "model": ..., "version": ...} + b"\\n" + filler bytes

The simulator installs exactly the version the payload names, so a test can hand the pipeline an
image that claims one version and carries another. build_hpm_image() wraps payloads into a real
PICMGFWU image (`ipmitool hpm upgrade FILE activate` accepts it); HpmTarget is the BMC side of
PICMG HPM.1, with pending (uploaded) and active versions and a timed activation.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass

from provisioner.drivers import hpm1
from provisioner.lab import ipmi_oem

COMPONENTS = ("bmc", "bios", "nic", "raid")   # HPM.1 component ids 0..3
DESCRIPTIONS = {"bmc": "BMC", "bios": "BIOS", "nic": "NIC", "raid": "RAID"}
SIMFW_MAGIC = b"SIMFW1"

# Get Component Properties, general properties byte (HPM.1 table 3-12)
_PROP_PREPARATION = 1 << 2
_PROP_DEFERRED_ACTIVATION = 1 << 4
# Get Target Upgrade Capabilities, global capabilities byte (HPM.1 table 3-10)
_CAP_DEFERRED_ACTIVATION = 1 << 4
_NO_VERSION = bytes([0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF])  # ipmitool prints it as "---.--"


def build_sim_payload(component: str, version: str, model: str | None = None, size: int = 4096) -> bytes:
    """A SIMFW1 payload of `size` bytes (deterministic filler) that installs `version`."""
    meta = {"component": component, "version": version}
    if model:
        meta["model"] = model
    head = SIMFW_MAGIC + json.dumps(meta, sort_keys=True).encode() + b"\n"
    return head + random.Random(f"{model}/{component}/{version}").randbytes(max(0, size - len(head)))


def parse_sim_payload(payload: bytes) -> dict:
    """The JSON header of a SIMFW1 payload; ValueError if it is not one."""
    if not payload.startswith(SIMFW_MAGIC):
        raise ValueError("not a SIMFW1 payload")
    end = payload.find(b"\n", len(SIMFW_MAGIC), 4096)
    try:
        meta = json.loads(payload[len(SIMFW_MAGIC):end])
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"SIMFW1 header is not JSON: {e}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("version"), str) or not meta.get("component"):
        raise ValueError("SIMFW1 header lacks component or version")
    return meta


def build_hpm_image(components: dict[str, tuple[str, bytes]], device_id: int, manufacturer_id: int,
                    product_id: int, *, earliest_compatible: tuple[int, int] = (0, 0)) -> bytes:
    """A PICMGFWU image carrying `{component: (version, payload)}` for the given target identity.

    The per-component HPM.1 version is encode_version(version); the header's firmware revision is
    the BMC component's version (or the first component's).
    """
    uploads = []
    for name, (version, payload) in components.items():
        if name not in COMPONENTS:
            raise ValueError(f"unknown component {name!r}; expected one of {', '.join(COMPONENTS)}")
        uploads.append(hpm1.UploadAction(COMPONENTS.index(name), hpm1.encode_version(version),
                                         f"{DESCRIPTIONS[name]} {version}", payload))
    if not uploads:
        raise ValueError("an HPM.1 image needs at least one component")
    mask = 0
    for up in uploads:
        mask |= 1 << up.component_id
    main = components.get("bmc", next(iter(components.values())))[0]
    header = hpm1.ImageHeader(device_id, manufacturer_id, product_id, mask, hpm1.encode_version(main),
                              earliest_compatible)
    return hpm1.pack_image(header, uploads)


@dataclass
class _Upload:
    mask: int
    data: bytearray
    next_block: int = 0
    blocks: int = 0


class HpmTarget:
    """The BMC side of HPM.1 for one simulated BMC.

    `firmware` is the node's persistent state, `{component: {"active": v, "pending": v|None}}`,
    and is changed in place. `schedule(delay, fn)` runs fn later on the simulator's IO thread;
    `record(event)` appends to the node's flash log; `changed()` marks the state for saving.
    """

    def __init__(self, firmware: dict, *, model: str | None, activation_s: float, max_block: int,
                 schedule: Callable[[float, Callable[[], None]], None], record: Callable[[dict], None],
                 changed: Callable[[], None], upgradable: list[str] | None = None):
        self.firmware, self.model = firmware, model
        # Components this BMC can write over HPM.1 (None: all it has). As on real hardware, the
        # others are not in the capabilities mask, and an upload to them is refused.
        self.upgradable = None if upgradable is None else set(upgradable)
        self.activation_s, self.max_block = activation_s, max_block
        self._schedule, self._record, self._changed = schedule, record, changed
        self.upload: _Upload | None = None
        self.activating = False
        self.last_command, self.last_code = 0, 0

    @property
    def present_mask(self) -> int:
        return sum(1 << i for i, name in enumerate(COMPONENTS) if self._upgradable(name))

    def _upgradable(self, name: str) -> bool:
        return name in self.firmware and (self.upgradable is None or name in self.upgradable)

    def version_bytes(self, name: str, which: str = "active") -> bytes:
        v = self.firmware.get(name, {}).get(which)
        return hpm1.encode_version(v) if v else _NO_VERSION

    # -- dispatch ------------------------------------------------------------------------------------

    def handle(self, command: int, data: bytes) -> tuple[int, bytes]:
        """Answer one netfn 0x2C request: (completion code, response data after the code)."""
        if not data or data[0] != hpm1.PICMG_ID:
            return 0xCC, b""
        handler = self._HANDLERS.get(command)
        if handler is None:
            return 0xC1, b""
        code, body = handler(self, bytes(data[1:]))
        if command not in (hpm1.GET_UPGRADE_STATUS, hpm1.GET_COMPONENT_PROPERTIES,
                           hpm1.GET_TARGET_UPGRADE_CAPABILITIES):
            self.last_command, self.last_code = command, code
        return code, (bytes([hpm1.PICMG_ID]) + body) if code in (0, hpm1.CC_IN_PROGRESS) else b""

    def _capabilities(self, _req: bytes) -> tuple[int, bytes]:
        # upgrade timeout 30 s, no self test, no rollback, inaccessibility 30 s (units of 5 s)
        return 0, bytes([0x00, _CAP_DEFERRED_ACTIVATION, 6, 0, 0, 6, self.present_mask])

    def _properties(self, req: bytes) -> tuple[int, bytes]:
        if len(req) < 2 or req[0] >= len(COMPONENTS) or not self._upgradable(COMPONENTS[req[0]]):
            return hpm1.CC_HPM_82, b""
        name, selector = COMPONENTS[req[0]], req[1]
        if selector == hpm1.PROP_GENERAL:
            return 0, bytes([_PROP_PREPARATION | _PROP_DEFERRED_ACTIVATION])
        if selector == hpm1.PROP_CURRENT_VERSION:
            return 0, self.version_bytes(name)
        if selector == hpm1.PROP_DESCRIPTION:
            return 0, DESCRIPTIONS[name].encode().ljust(hpm1.DESCRIPTION_LENGTH, b"\0")
        if selector == hpm1.PROP_DEFERRED_VERSION:
            return 0, self.version_bytes(name, "pending")
        return hpm1.CC_HPM_83, b""  # rollback and OEM properties: not supported

    def _abort(self, _req: bytes) -> tuple[int, bytes]:
        if self.upload:
            self._record({"event": "upload_aborted", "reason": "abort command",
                          "components": self._names(self.upload.mask)})
        self.upload = None
        return 0, b""

    def _initiate(self, req: bytes) -> tuple[int, bytes]:
        if len(req) < 2:
            return 0xC7, b""
        mask, action = req[0], req[1]
        if not mask or mask & ~self.present_mask:
            return hpm1.CC_HPM_81, b""
        if self.activating:
            return 0xD5, b""
        if action == hpm1.ACTION_PREPARE:
            return 0, b""
        if action != hpm1.ACTION_UPLOAD_FOR_UPGRADE:
            return hpm1.CC_HPM_82, b""  # backup and compare are not supported
        self.upload = _Upload(mask, bytearray())
        self._record({"event": "upload_started", "components": self._names(mask)})
        return 0, b""

    def _upload_block(self, req: bytes) -> tuple[int, bytes]:
        up = self.upload
        if up is None:
            return 0xD5, b""
        if not req:
            return 0xC7, b""
        block, chunk = req[0], req[1:]
        if len(chunk) > self.max_block:
            return hpm1.CC_LENGTH_INVALID, b""
        if block == (up.next_block - 1) & 0xFF and up.blocks:
            return 0, b""  # a retransmission whose acknowledgement was lost: already have it
        if block != up.next_block:
            return 0xCC, b""
        up.data += chunk
        up.next_block = (up.next_block + 1) & 0xFF
        up.blocks += 1
        return 0, b""

    def _finish(self, req: bytes) -> tuple[int, bytes]:
        up = self.upload
        if up is None:
            return 0xD5, b""
        if len(req) < 5:
            return 0xC7, b""
        component_id, length = req[0], int.from_bytes(req[1:5], "little")
        if component_id >= len(COMPONENTS) or not up.mask & (1 << component_id):
            return hpm1.CC_HPM_82, b""
        name = COMPONENTS[component_id]
        self.upload = None
        if length != len(up.data):
            return self._reject(name, up, f"length {length} announced, {len(up.data)} received",
                                hpm1.CC_HPM_81)
        try:
            meta = parse_sim_payload(bytes(up.data))
        except ValueError as e:
            return self._reject(name, up, str(e), hpm1.CC_HPM_82)
        if meta["component"] != name:
            return self._reject(name, up, f"image is for component {meta['component']!r}", hpm1.CC_HPM_82)
        if self.model and meta.get("model") and meta["model"] != self.model:
            return self._reject(name, up, f"image is for model {meta['model']!r}, this is {self.model!r}",
                                hpm1.CC_HPM_82)
        self.firmware[name]["pending"] = meta["version"]
        self._changed()
        self._record({"event": "uploaded", "component": name, "version": meta["version"],
                      "bytes": len(up.data), "blocks": up.blocks})
        return 0, b""

    def _reject(self, name: str, up: _Upload, reason: str, code: int) -> tuple[int, bytes]:
        self._record({"event": "rejected", "component": name, "reason": reason, "bytes": len(up.data)})
        return code, b""

    def _status(self, _req: bytes) -> tuple[int, bytes]:
        return 0, bytes([self.last_command, self.last_code])

    def _activate(self, _req: bytes) -> tuple[int, bytes]:
        pending = [n for n, fw in self.firmware.items() if fw.get("pending")]
        if self.activating:
            return hpm1.CC_IN_PROGRESS, b""
        if not pending:
            return 0xD5, b""
        self.activating = True
        self._schedule(self.activation_s, self._activation_done)
        return hpm1.CC_IN_PROGRESS, b""

    def _activation_done(self) -> None:
        if not self.activating:
            return  # power was lost while activating; the old versions stay
        for name, fw in self.firmware.items():
            if fw.get("pending"):
                previous, fw["active"], fw["pending"] = fw["active"], fw["pending"], None
                self._record({"event": "activated", "component": name, "version": fw["active"],
                              "previous": previous})
        self.activating = False
        self.last_command, self.last_code = hpm1.ACTIVATE_FIRMWARE, 0
        self._changed()

    def _self_test(self, _req: bytes) -> tuple[int, bytes]:
        return 0, bytes([0x55, 0x00])  # 55h: no error (IPMI Get Self Test Results convention)

    def _rollback_status(self, _req: bytes) -> tuple[int, bytes]:
        return 0, bytes([0x00])

    _HANDLERS = {
        hpm1.GET_TARGET_UPGRADE_CAPABILITIES: _capabilities,
        hpm1.GET_COMPONENT_PROPERTIES: _properties,
        hpm1.ABORT_FIRMWARE_UPGRADE: _abort,
        hpm1.INITIATE_UPGRADE_ACTION: _initiate,
        hpm1.UPLOAD_FIRMWARE_BLOCK: _upload_block,
        hpm1.FINISH_FIRMWARE_UPLOAD: _finish,
        hpm1.GET_UPGRADE_STATUS: _status,
        hpm1.ACTIVATE_FIRMWARE: _activate,
        hpm1.QUERY_SELF_TEST_RESULTS: _self_test,
        hpm1.QUERY_ROLLBACK_STATUS: _rollback_status,
    }

    # -- faults ----------------------------------------------------------------------------------------

    def power_lost(self) -> dict | None:
        """The BMC lost power: an upload in flight or an activation in progress is gone."""
        lost = None
        if self.upload is not None:
            lost = {"event": "flash_aborted", "reason": "power lost during upload",
                    "components": self._names(self.upload.mask), "bytes": len(self.upload.data),
                    "blocks": self.upload.blocks}
        elif self.activating:
            lost = {"event": "flash_aborted", "reason": "power lost during activation",
                    "components": [n for n, fw in self.firmware.items() if fw.get("pending")]}
        self.upload, self.activating = None, False
        self.last_command, self.last_code = 0, 0
        if lost:
            self._record(lost)
        return lost

    def _names(self, mask: int) -> list[str]:
        return [n for i, n in enumerate(COMPONENTS) if mask & (1 << i)]

    # -- OEM: exact version strings (provisioner.lab.ipmi_oem) --------------------------------------

    def handle_oem(self, command: int, data: bytes) -> tuple[int, bytes]:
        if command == ipmi_oem.GET_INVENTORY:
            records = []
            for name in COMPONENTS:
                fw = self.firmware.get(name)
                if fw:
                    records.append((name, ipmi_oem.STATE_ACTIVE, fw["active"]))
                    if fw.get("pending"):
                        records.append((name, ipmi_oem.STATE_PENDING, fw["pending"]))
            return 0, ipmi_oem.pack_inventory(records)
        if command == ipmi_oem.GET_VERSION_STRING:
            if not data or data[0] >= len(COMPONENTS) or COMPONENTS[data[0]] not in self.firmware:
                return hpm1.CC_HPM_82, b""
            which = "pending" if len(data) > 1 and data[1] == ipmi_oem.STATE_PENDING else "active"
            v = self.firmware[COMPONENTS[data[0]]].get(which)
            return (0, v.encode("ascii", "replace")) if v else (hpm1.CC_HPM_82, b"")
        return 0xC1, b""

