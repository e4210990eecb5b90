"""One simulated BMC: pyghmi's Bmc with chassis power, boot flags, Get Device ID, HPM.1 and OEM commands.

SimSite (provisioner.lab.bmc) creates them, owns their sockets and calls `receive()` on its IO
thread; everything here runs on that thread with the site's lock held.
"""

from __future__ import annotations

import logging
import socket
import struct
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pyghmi.ipmi.bmc import Bmc

from provisioner.drivers import hpm1
from provisioner.lab import hpm, ipmi_oem, ipmi_server

if TYPE_CHECKING:
    from provisioner.lab.bmc import SimSite

log = logging.getLogger("provisioner.lab.bmc")

SIM_DEVICE_ID = 0x20
SIM_PRODUCT_ID = 0x0042
LOG_LIMIT = 100
# Boot device selector, bits 5:2 of boot flags data byte 2 (IPMI 2.0 table 28-14, parameter 5)
BOOT_DEVICES = {0: "default", 1: "pxe", 2: "disk", 3: "disk-safe", 4: "diag", 5: "cdrom", 6: "bios",
                15: "floppy"}
_UUID_NS = uuid.UUID("6f1c1f4e-3b1e-4b7e-9a51-0c5b9d2a7c11")


@dataclass
class Faults:
    """What is wrong with one simulated BMC right now (not saved across restarts)."""
    unreachable: bool = False            # every packet dropped
    delay_s: float = 0.0                 # every request answered this much later
    loss: float = 0.0                    # probability of dropping each request and each reply
    wrong_password: bool = False         # the BMC rejects the configured password
    power_loss_at_block: int | None = None  # lose power when this HPM upload block arrives (one shot)
    outage_s: float = 0.5                # how long the BMC is dark after losing power


def new_node_state(node: dict) -> dict:
    firmware = {c: {"active": str(v), "pending": None} for c, v in node.get("firmware", {}).items()}
    unknown = set(firmware) - set(hpm.COMPONENTS)
    if unknown:
        raise ValueError(f"node {node['name']}: unknown firmware component(s) {sorted(unknown)}; "
                         f"expected {', '.join(hpm.COMPONENTS)}")
    return {"name": node["name"], "power": node.get("power", "off"), "boot_override": None,
            "last_boot": None, "boots": 0, "firmware": firmware, "log": []}


class SimBmc(Bmc):
    """One simulated BMC: chassis power, boot flags, Get Device ID, HPM.1 and the OEM commands.

    Created by SimSite, which owns its socket and calls `receive()` on the IO thread.
    """

    def __init__(self, node: dict, state: dict, site: SimSite, sock: socket.socket):
        # Not calling IpmiServer.__init__: it would register the socket in pyghmi's globals and
        # start pyghmi's select() IO thread (fixes C, G, H). These are the attributes it sets.
        self.node, self.state, self.site = node, state, site
        self.name = node["name"]
        self.address, self.port = node["bmc_address"], int(node["bmc_port"])
        self.deviceid, self.revision = SIM_DEVICE_ID, 1
        self.ipmiversion, self.additionaldevices = 2, 0x80  # IPMI 2.0; chassis device
        self.mfgid, self.prodid = ipmi_oem.SIM_MANUFACTURER_ID, SIM_PRODUCT_ID
        self.authdata = _Credentials(self)
        self.authcap = struct.pack("BBBBBBBBB", 0, 1, 0b10000000, 0b00000100, 0b00000010, 0, 0, 0, 0)
        self.kg, self.timeout = None, 60
        self.uuid = uuid.uuid5(_UUID_NS, self.name)
        self.serversocket = sock
        self.pktqueue = None
        self.sessions: dict = {}
        self.faults = Faults()
        self.down_until = 0.0
        self.hpm = hpm.HpmTarget(state["firmware"], model=node.get("model"),
                                 activation_s=site.activation_s, max_block=site.max_block,
                                 schedule=site.call_later, record=self.record,
                                 changed=lambda: site.mark_dirty(self.name), upgradable=node.get("hpm"))

    # -- transport (IO thread) -----------------------------------------------------------------------

    def receive(self, data: bytes, addr) -> None:
        f, now = self.faults, time.monotonic()
        if f.unreachable or now < self.down_until:
            return
        if f.loss and self.site.rng.random() < f.loss:
            return
        if f.delay_s:
            self.site.call_later(f.delay_s, lambda: ipmi_server.dispatch(self, data, addr))
            return
        ipmi_server.dispatch(self, data, addr)

    def transmit(self, packet: bytes, addr) -> None:
        if self.faults.loss and self.site.rng.random() < self.faults.loss:
            return
        if time.monotonic() < self.down_until:
            return
        try:
            self.serversocket.sendto(packet, addr)
        except OSError:
            pass  # a full send buffer is a lost packet; the client retries

    def record(self, event: dict) -> None:
        event = {"at": round(time.time(), 3), **event}
        self.state["log"].append(event)
        del self.state["log"][:-LOG_LIMIT]
        self.site.mark_dirty(self.name)

    # -- IPMI commands -------------------------------------------------------------------------------

    def handle_raw_request(self, request, session):
        netfn, cmd, data = request["netfn"], request["command"], bytes(request["data"])
        try:
            if netfn == hpm1.NETFN_PICMG:
                code, body = self._hpm(cmd, data)
            elif netfn == ipmi_oem.NETFN_OEM:
                code, body = self.hpm.handle_oem(cmd, data)
            elif netfn == 0x06 and cmd == 0x01:
                return self.send_device_id(session)
            elif netfn == 0x06 and cmd == 0x02:  # Cold Reset: answer, then reboot the BMC
                session.send_ipmi_response()
                self.site.call_later(0.01, lambda: self.reboot("cold reset", 0.2))
                return
            elif netfn == 0x06 and cmd in (0x08, 0x37):  # Get Device GUID / Get System GUID
                code, body = 0, self.uuid.bytes_le
            elif netfn == 0x06 and cmd == 0x04:  # Get Self Test Results: 55h = no error
                code, body = 0, b"\x55\x00"
            elif netfn == 0x00 and cmd == 0x08:
                code, body = self._set_boot_options(data), b""
            elif netfn == 0x00 and cmd == 0x09:
                code, body = self._get_boot_options(data)
            else:
                return super().handle_raw_request(request, session)  # chassis status and control
        except Exception:
            log.exception("sim.bmc.error node=%s netfn=%#x cmd=%#x", self.name, netfn, cmd)
            code, body = 0xFF, b""
        if code >= 0:  # negative: the BMC died handling this request, nobody answers
            session.send_ipmi_response(data=body, code=code)

    def send_device_id(self, session):
        # Fix B: pyghmi packs the 3-byte manufacturer id as 4 bytes, shifting the product id.
        # Layout per IPMI 2.0 table 20-2; firmware revision and aux bytes from the BMC's version.
        v = self.hpm.version_bytes("bmc")
        body = bytes([self.deviceid, self.revision, v[0] & 0x7F, v[1], 0x02, self.additionaldevices])
        body += self.mfgid.to_bytes(3, "little") + self.prodid.to_bytes(2, "little") + v[2:6]
        session.send_ipmi_response(data=body)

    def _hpm(self, cmd: int, data: bytes) -> tuple[int, bytes]:
        f = self.faults
        if cmd == hpm1.UPLOAD_FIRMWARE_BLOCK and f.power_loss_at_block is not None and self.hpm.upload \
                and self.hpm.upload.blocks >= f.power_loss_at_block:
            f.power_loss_at_block = None  # one shot
            self.power_lost()
            return -1, b""
        return self.hpm.handle(cmd, data)

    def get_power_state(self):
        return self.state["power"]

    def power_on(self):
        if self.state["power"] == "on":
            return 0
        self._set_power("on", "power on")
        self._boot()
        return 0

    def power_off(self):
        self._set_power("off", "power off")
        return 0

    def power_shutdown(self):
        self._set_power("off", "soft off")
        return 0

    def power_cycle(self):
        if self.state["power"] == "off":
            return 0xD5  # not supported in present state, as most BMCs answer
        self.record({"event": "power", "power": "cycle"})
        self._boot()
        return 0

    def power_reset(self):
        return self.power_cycle()

    def pulse_diag(self):
        return 0xD5

    def _set_power(self, power: str, why: str) -> None:
        if self.state["power"] != power:
            self.state["power"] = power
            self.record({"event": "power", "power": power, "reason": why})

    def _boot(self) -> None:
        override = self._pending_override()
        if override and not override.get("persistent"):
            self.state["boot_override"] = None
        device = override["device"] if override else "disk"
        self.state["boots"] += 1
        # What the host's firmware reads at POST: the device and the BIOS boot type flag (None: no
        # override, the firmware boots the way it is set up to). The host honours these, not its spec.
        self.state["last_boot"] = {"device": device, "efi": override.get("efi", False) if override else None,
                                   "at": round(time.time(), 3)}
        self.site.mark_dirty(self.name)
        self.site.notify_power_on(self.name, device)

    def _pending_override(self) -> dict | None:
        """The boot request still in force. IPMI 2.0 §28.12: the BMC clears the boot flags' valid
        bit when no restart follows within 60 s of setting them (boot_flag_timeout_s here)."""
        o = self.state["boot_override"]
        if o and not o.get("persistent"):
            age = time.time() - o.get("set_at", time.time())
            if age > self.site.boot_flag_timeout_s:
                self.state["boot_override"] = None
                self.record({"event": "boot_override_expired", "override": o, "age_s": round(age, 1)})
                return None
        return o

    def _set_boot_options(self, data: bytes) -> int:
        if not data:
            return 0xC7
        param = data[0] & 0x7F
        if param in (0, 3, 4):
            return 0  # set-in-progress, boot info acknowledge, boot initiator info: accepted
        if param != 5:
            return 0x80  # parameter not supported
        if len(data) < 3:
            return 0xC7
        flags, selector = data[1], (data[2] >> 2) & 0x0F
        if selector not in BOOT_DEVICES:
            return 0xCC
        if not flags & 0x80 or selector == 0:
            self.state["boot_override"] = None
        else:
            self.state["boot_override"] = {"device": BOOT_DEVICES[selector],
                                           "persistent": bool(flags & 0x40), "efi": bool(flags & 0x20),
                                           "set_at": round(time.time(), 3)}
        self.record({"event": "boot_override", "override": self.state["boot_override"]})
        return 0

    def _get_boot_options(self, data: bytes) -> tuple[int, bytes]:
        param = data[0] & 0x7F if data else 5
        if param in (0, 3, 4):
            return 0, bytes([1, param, 0])
        if param != 5:
            return 0x80, b""
        o = self._pending_override()
        if not o:
            return 0, bytes([1, 5, 0, 0, 0, 0, 0])
        selector = next(k for k, v in BOOT_DEVICES.items() if v == o["device"])
        flags = 0x80 | (0x40 if o["persistent"] else 0) | (0x20 if o["efi"] else 0)
        return 0, bytes([1, 5, flags, selector << 2, 0, 0, 0])

    # -- faults --------------------------------------------------------------------------------------

    def power_lost(self) -> None:
        """AC power lost: the BMC goes dark for outage_s, sessions and any upload are gone, host off."""
        self.hpm.power_lost()
        self.reboot("power lost", self.faults.outage_s)
        self._set_power("off", "power lost")

    def reboot(self, why: str, dark_s: float) -> None:
        self.sessions.clear()
        self.down_until = time.monotonic() + dark_s
        self.record({"event": "bmc_reboot", "reason": why})


class _Credentials:
    """authdata for pyghmi's ServerSession: looked up per login, so faults apply at once."""

    def __init__(self, bmc: SimBmc):
        self.bmc = bmc

    def get(self, username, default=None):
        node = self.bmc.node
        if username != node["username"]:
            return default
        return node["password"] + "-rejected" if self.bmc.faults.wrong_password else node["password"]
