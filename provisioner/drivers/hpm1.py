"""PICMG HPM.1 wire format: command numbers, completion codes, versions and upgrade images. No I/O.

References are to PICMG HPM.1 r1.0 ("IPM Controller Firmware Upgrade"); ipmitool's
lib/ipmi_hpmfwupg.c is the independent implementation our images are checked against.

Versions. HPM.1 carries a firmware version as 6 bytes: major (7 bits), minor (one BCD byte,
0-99) and 4 auxiliary bytes. Our versions are dotted strings; the mapping is

    "X.Y.Z"  <->  [X, BCD(Y), Z as a 32-bit big-endian integer]      X <= 127, Y <= 99, Z < 2**32
    "X.Y"    ->   [X, BCD(Y), 0, 0, 0, 0]  (reads back as "X.Y.0")

so ipmitool prints "2.1.5" as `2.01 00000005` and decode_version() gives "2.1.5" back. Anything
that does not fit (a leading-zero "7.00.60", a vendor string "U46-2.1") is encoded on a best-effort
basis and cannot be recovered from the bytes alone; a BMC whose manufacturer offers exact version
strings through OEM commands is read through its extension (provisioner.drivers.ipmi_oem).
"""

from __future__ import annotations

import hashlib
import re
import struct
import time
from dataclasses import dataclass, field

NETFN_PICMG = 0x2C
PICMG_ID = 0x00  # first data byte of every PICMG command and response (HPM.1 §3)

# HPM.1 §3.9 command table
GET_TARGET_UPGRADE_CAPABILITIES = 0x2E
GET_COMPONENT_PROPERTIES = 0x2F
ABORT_FIRMWARE_UPGRADE = 0x30
INITIATE_UPGRADE_ACTION = 0x31
UPLOAD_FIRMWARE_BLOCK = 0x32
FINISH_FIRMWARE_UPLOAD = 0x33
GET_UPGRADE_STATUS = 0x34
ACTIVATE_FIRMWARE = 0x35
QUERY_SELF_TEST_RESULTS = 0x36
QUERY_ROLLBACK_STATUS = 0x37
INITIATE_MANUAL_ROLLBACK = 0x38

# Get Component Properties selectors (HPM.1 table 3-11)
PROP_GENERAL = 0
PROP_CURRENT_VERSION = 1
PROP_DESCRIPTION = 2
PROP_ROLLBACK_VERSION = 3
PROP_DEFERRED_VERSION = 4

# Initiate Upgrade Action actions (HPM.1 table 3-14)
ACTION_BACKUP = 0
ACTION_PREPARE = 1
ACTION_UPLOAD_FOR_UPGRADE = 2
ACTION_UPLOAD_FOR_COMPARE = 3

# Completion codes shared by several HPM.1 commands
CC_IN_PROGRESS = 0x80      # long-duration command accepted; poll Get Upgrade Status
CC_HPM_81 = 0x81           # size mismatch (Finish), invalid component mask (Initiate), ...
CC_HPM_82 = 0x82           # invalid component / image validation failure
CC_HPM_83 = 0x83           # firmware mismatch (compare), rollback denied, invalid property
CC_LENGTH_INVALID = 0xC7   # upload block too long: the client retries with a smaller block
CC_LENGTH_EXCEEDED = 0xC8

DESCRIPTION_LENGTH = 12         # Get Component Properties, selector 2
IMAGE_DESCRIPTION_LENGTH = 21   # upload action record
IMAGE_SIGNATURE = b"PICMGFWU"
IMAGE_FORMAT_VERSION = 0
MD5_LENGTH = 16
HEADER = struct.Struct("<8sBB3s2s4sBBBBB2s6sH")  # HPM.1 table 4-1, 34 bytes before the OEM data


class VersionError(ValueError):
    pass


_DOTTED = re.compile(r"^(\d+)\.(\d+)(?:\.(\d+))?$")


def encode_version(version: str, *, strict: bool = False) -> bytes:
    """Our dotted version -> HPM.1 6-byte version (see the module docstring)."""
    m = _DOTTED.match(version)
    if m:
        major, minor, aux = int(m[1]), int(m[2]), int(m[3] or 0)
        exact = major <= 127 and minor <= 99 and aux < 2**32 and decode_version(
            bytes([major, _bcd(minor), *aux.to_bytes(4, "big")])) in (version, version + ".0")
        if exact:
            return bytes([major, _bcd(minor), *aux.to_bytes(4, "big")])
    if strict:
        raise VersionError(f"version {version!r} has no exact HPM.1 encoding; expected X.Y.Z with "
                           f"X<=127, Y<=99 and no leading zeros")
    nums = [int(n) for n in re.findall(r"\d+", version)] + [0, 0, 0]
    return bytes([min(nums[0], 127), _bcd(min(nums[1], 99)), *min(nums[2], 2**32 - 1).to_bytes(4, "big")])


def decode_version(raw: bytes | bytearray | list[int]) -> str:
    """HPM.1 6-byte version -> "major.minor.aux" (minor decoded from BCD, aux as one integer)."""
    raw = bytes(raw)
    major, minor = raw[0] & 0x7F, _from_bcd(raw[1])
    aux = int.from_bytes(raw[2:6], "big") if len(raw) >= 6 else 0
    return f"{major}.{minor}.{aux}"


def _bcd(n: int) -> int:
    return ((n // 10) << 4) | (n % 10)


def _from_bcd(b: int) -> int:
    hi, lo = b >> 4, b & 0x0F
    return hi * 10 + lo if hi < 10 and lo < 10 else b  # not BCD after all: take it as binary


def checksum(data: bytes) -> int:
    """Two's complement checksum: the bytes plus the checksum sum to 0 mod 256 (HPM.1 §4)."""
    return (-sum(data)) & 0xFF


@dataclass(frozen=True)
class ImageHeader:
    device_id: int
    manufacturer_id: int
    product_id: int
    components: int                 # bit mask of the components this image carries
    firmware_revision: bytes        # 6 bytes
    earliest_compatible: tuple[int, int] = (0, 0)
    capabilities: int = 0
    self_test_timeout: int = 0
    rollback_timeout: int = 0
    inaccessibility_timeout: int = 0
    time: int = 0
    oem_data: bytes = b""


@dataclass(frozen=True)
class UploadAction:
    component_id: int
    version: bytes                  # 6 bytes
    description: str
    data: bytes = field(repr=False)


@dataclass(frozen=True)
class Image:
    header: ImageHeader
    prepare_mask: int
    uploads: tuple[UploadAction, ...]

    def upload_for(self, component_id: int) -> UploadAction | None:
        return next((u for u in self.uploads if u.component_id == component_id), None)


def pack_image(header: ImageHeader, uploads: list[UploadAction], *, prepare: bool = True) -> bytes:
    """Build a PICMGFWU image: header, optional prepare record, one upload record each, MD5 trailer."""
    major, minor = header.earliest_compatible
    head = HEADER.pack(
        IMAGE_SIGNATURE, IMAGE_FORMAT_VERSION, header.device_id,
        header.manufacturer_id.to_bytes(3, "little"), header.product_id.to_bytes(2, "little"),
        (header.time or int(time.time())).to_bytes(4, "little"), header.capabilities,
        header.components, header.self_test_timeout, header.rollback_timeout,
        header.inaccessibility_timeout, bytes([major, minor]), header.firmware_revision,
        len(header.oem_data)) + header.oem_data
    out = bytearray(head + bytes([checksum(head)]))
    if prepare:
        rec = bytes([ACTION_PREPARE, header.components])
        out += rec + bytes([checksum(rec)])
    for up in uploads:
        # The record checksum covers the 3-byte record header only; ipmitool accepts that and the
        # 34-byte reading of the spec's ambiguous wording.
        rec = bytes([ACTION_UPLOAD_FOR_UPGRADE, 1 << up.component_id])
        desc = up.description.encode("ascii")[:IMAGE_DESCRIPTION_LENGTH - 1].ljust(IMAGE_DESCRIPTION_LENGTH, b"\0")
        out += rec + bytes([checksum(rec)]) + up.version + desc + struct.pack("<I", len(up.data)) + up.data
    out += hashlib.md5(out).digest()
    return bytes(out)


def parse_image(image: bytes) -> Image:
    """Parse and validate a PICMGFWU image (signature, header checksum, records, MD5); ValueError if bad."""
    if len(image) < HEADER.size + 1 + MD5_LENGTH or image[:8] != IMAGE_SIGNATURE:
        raise ValueError("not an HPM.1 image: no PICMGFWU signature")
    if hashlib.md5(image[:-MD5_LENGTH]).digest() != image[-MD5_LENGTH:]:
        raise ValueError("HPM.1 image MD5 trailer does not match its content")
    (_sig, fmt, device_id, man, prod, ts, caps, comps, st_to, rb_to, ia_to, earliest, rev,
     oem_len) = HEADER.unpack_from(image)
    if fmt != IMAGE_FORMAT_VERSION:
        raise ValueError(f"HPM.1 image format version {fmt} is unknown (expected 0)")
    end = HEADER.size + oem_len
    if sum(image[:end + 1]) & 0xFF:
        raise ValueError("HPM.1 image header checksum is wrong")
    header = ImageHeader(device_id, int.from_bytes(man, "little"), int.from_bytes(prod, "little"),
                         comps, rev, (earliest[0], earliest[1]), caps, st_to, rb_to, ia_to,
                         int.from_bytes(ts, "little"), image[HEADER.size:end])
    pos, limit, prepare, uploads = end + 1, len(image) - MD5_LENGTH, 0, []
    while pos < limit:
        action, mask, _ = image[pos:pos + 3]
        if sum(image[pos:pos + 3]) & 0xFF and sum(image[pos:pos + 34]) & 0xFF:
            raise ValueError(f"HPM.1 action record at offset {pos} has a bad checksum")
        pos += 3
        if action == ACTION_PREPARE:
            prepare |= mask
        elif action == ACTION_UPLOAD_FOR_UPGRADE:
            if mask == 0 or mask & (mask - 1):
                raise ValueError(f"HPM.1 upload record at offset {pos - 3} names {mask:#04x}, not one component")
            version = image[pos:pos + 6]
            desc = image[pos + 6:pos + 27].split(b"\0", 1)[0].decode("ascii", "replace")
            (length,) = struct.unpack_from("<I", image, pos + 27)
            pos += 31
            if pos + length > limit:
                raise ValueError("HPM.1 upload record runs past the end of the image")
            uploads.append(UploadAction(mask.bit_length() - 1, version, desc, image[pos:pos + length]))
            pos += length
        elif action != ACTION_BACKUP:
            raise ValueError(f"HPM.1 action type {action} is unknown")
    return Image(header, prepare, tuple(uploads))
