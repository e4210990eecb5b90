"""IPMI 2.0 wire format the driver needs: command numbers, boot flags, Get Device ID. No I/O.

References are to the IPMI v2.0 rev 1.1 specification. PICMG HPM.1 is in provisioner.drivers.hpm1.
"""

from __future__ import annotations

from dataclasses import dataclass

from provisioner.drivers import hpm1

NETFN_CHASSIS, NETFN_APP = 0x00, 0x06
CHASSIS_STATUS, CHASSIS_CONTROL = 0x01, 0x02            # §28.2, §28.3
SET_BOOT_OPTIONS, GET_BOOT_OPTIONS = 0x08, 0x09          # §28.12, §28.13
GET_DEVICE_ID = 0x01                                     # §20.1
CONTROL_OFF, CONTROL_ON, CONTROL_CYCLE = 0, 1, 2         # Chassis Control data 1 (table 28-4)

BOOT_FLAGS = 5                                           # boot options parameter 5 (table 28-14)
# Boot flags data 1: bit 7 valid, bit 6 persistent (0: next boot only), bit 5 "BIOS boot type"
# (0: PC compatible, i.e. legacy BIOS; 1: EFI)
BOOT_FLAG_VALID, BOOT_FLAG_PERSISTENT, BOOT_FLAG_EFI = 0x80, 0x40, 0x20
# Boot device selector, bits 5:2 of boot flags data 2
BOOT_SELECTORS = {"pxe": 1, "disk": 2, "cdrom": 5, "bios": 6, "default": 0}
BOOT_NAMES = {1: "pxe", 2: "disk", 3: "disk", 5: "cdrom", 6: "bios", 0: "default"}


def boot_flags(device: str, mode: str) -> bytes:
    """Set System Boot Options data: a one-time boot from `device` in boot `mode` ("bios" | "uefi").

    "default" clears the request (flags not valid): the BIOS boots the way it is set up to.
    """
    selector = BOOT_SELECTORS[device]
    if selector == 0:
        return bytes([BOOT_FLAGS, 0, 0, 0, 0, 0])
    flags = BOOT_FLAG_VALID | (BOOT_FLAG_EFI if mode == "uefi" else 0)  # persistent bit clear: once
    return bytes([BOOT_FLAGS, flags, selector << 2, 0, 0, 0])


def read_boot_flags(answer: bytes) -> tuple[str, str]:
    """(device, mode) from a Get System Boot Options answer for parameter 5; ("default", "default")
    when no valid request is pending, ("unknown", "unknown") when the answer is too short."""
    if len(answer) < 4:
        return "unknown", "unknown"
    flags, selector = answer[2], (answer[3] >> 2) & 0x0F
    if not flags & BOOT_FLAG_VALID:
        return "default", "default"
    return BOOT_NAMES.get(selector, "other"), "uefi" if flags & BOOT_FLAG_EFI else "bios"


@dataclass(frozen=True)
class DeviceId:
    """Get Device ID, parsed per table 20-2 (pyghmi's get_firmware mangles the minor: fix K)."""
    device_id: int
    revision: int
    available: bool
    firmware_major: int
    firmware_minor: int        # BCD, as sent
    ipmi_version: str
    manufacturer_id: int       # IANA Private Enterprise Number
    product_id: int
    aux: bytes

    @property
    def firmware_revision(self) -> str:
        """As ipmitool prints it: "2.15", "9.08"."""
        return f"{self.firmware_major}.{self.firmware_minor:02x}"

    @property
    def version(self) -> str:
        """Our dotted form (hpm1.decode_version): major.minor.aux."""
        return hpm1.decode_version(bytes([self.firmware_major, self.firmware_minor]) + self.aux.ljust(4, b"\0"))


def parse_device_id(data: bytes) -> DeviceId:
    d = bytes(data)
    if len(d) < 11:
        raise ValueError(f"Get Device ID answer is {len(d)} bytes, expected at least 11")
    return DeviceId(d[0], d[1] & 0x0F, not d[2] & 0x80, d[2] & 0x7F, d[3], f"{d[4] & 0x0F}.{d[4] >> 4}",
                    int.from_bytes(d[6:9], "little") & 0x0FFFFF, int.from_bytes(d[9:11], "little"),
                    d[11:15])
