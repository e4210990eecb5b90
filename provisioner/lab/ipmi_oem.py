"""The lab simulator's OEM IPMI commands: exact firmware version strings.

HPM.1 versions are 6 bytes and cannot carry every version string a vendor uses ("7.00.60" has a
leading zero, see provisioner.drivers.hpm1). The simulated BMC therefore also answers two OEM
commands under netfn 0x30. The IPMI driver sends them only through `LabOem`, its OEM extension
registered for SIM_MANUFACTURER_ID (entry point group "provisioner.ipmi_oem", see
provisioner.drivers.ipmi_oem), because netfn 0x30 means something different (sometimes destructive)
on every real vendor's BMC. The driver itself never names the simulator.

  netfn 0x30 cmd 0x01  Get component version string
      request:  [component id (HPM.1 numbering), which (0 = active, 1 = pending)]
      response: ASCII version, or completion code 0x82 for an unknown component / no pending one
  netfn 0x30 cmd 0x02  Get firmware inventory
      request:  []
      response: records [state (0 = active, 1 = pending), name length, ASCII name ("bmc", "bios",
                "nic", "raid"), version length, ASCII version], one per component and state
"""

from __future__ import annotations

from provisioner.drivers.base import ComponentVersion

NETFN_OEM = 0x30
GET_VERSION_STRING = 0x01
GET_INVENTORY = 0x02

# IANA Private Enterprise Number 32473 is reserved for documentation and examples (RFC 5612), so
# no real BMC reports it: seeing it in Get Device ID means "this is the lab simulator".
SIM_MANUFACTURER_ID = 32473

STATE_ACTIVE = 0
STATE_PENDING = 1
STATE_NAMES = {STATE_ACTIVE: "active", STATE_PENDING: "pending"}


def pack_inventory(records: list[tuple[str, int, str]]) -> bytes:
    """[(component name, state, version)] -> the Get firmware inventory response data."""
    out = bytearray()
    for name, state, version in records:
        n, v = name.encode("ascii")[:255], version.encode("ascii", "replace")[:255]
        out += bytes([state, len(n)]) + n + bytes([len(v)]) + v
    return bytes(out)


def unpack_inventory(data: bytes) -> list[tuple[str, int, str]]:
    data, pos, out = bytes(data), 0, []
    try:
        while pos < len(data):
            state, nlen = data[pos], data[pos + 1]
            name = data[pos + 2:pos + 2 + nlen].decode("ascii", "replace")
            vlen = data[pos + 2 + nlen]
            version = data[pos + 3 + nlen:pos + 3 + nlen + vlen].decode("ascii", "replace")
            if pos + 3 + nlen + vlen > len(data):
                raise IndexError
            out.append((name, state, version))
            pos += 3 + nlen + vlen
    except IndexError:
        raise ValueError("truncated OEM firmware inventory record") from None
    return out


class LabOem:
    """The IPMI driver's extension for the lab's BMCs: exact version strings from GET_INVENTORY."""

    manufacturer_id = SIM_MANUFACTURER_ID

    def firmware_versions(self, send) -> list[ComponentVersion]:
        return [ComponentVersion(name, version, STATE_NAMES.get(state, "unknown"))
                for name, state, version in unpack_inventory(send(NETFN_OEM, GET_INVENTORY, b""))]
