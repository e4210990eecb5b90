"""TFTP wire format: parsing requests, negotiating options, encoding replies. No I/O.

Everything here takes bytes from the network at face value: any datagram, however short or
malformed, yields either a `Request` or a `BadPacket` with a one-line reason, never another
exception. tftpy's decoder is not used on the receive side for that reason (it raises
struct.error, UnicodeDecodeError or ValueError on such input). Its OACK encoder was used until
it turned out to cost the server's start-up ~0.2 s of imports (tftpy pulls in importlib.metadata);
an OACK is four lines of RFC 2347, so it is encoded here, and the tests check the bytes against
tftpy's encoder.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field

# Opcodes, RFC 1350 section 5 and RFC 2347 (OACK)
OP_RRQ, OP_WRQ, OP_DATA, OP_ACK, OP_ERROR, OP_OACK = 1, 2, 3, 4, 5, 6

# Error codes, RFC 1350 appendix, RFC 2347 (8)
ERR_UNDEFINED = 0
ERR_NOT_FOUND = 1
ERR_ACCESS = 2
ERR_ILLEGAL = 4
ERR_UNKNOWN_TID = 5
ERR_OPTIONS = 8

OPT_BLKSIZE = "blksize"  # RFC 2348
OPT_TSIZE = "tsize"  # RFC 2349
OPT_TIMEOUT = "timeout"  # RFC 2349
OPT_WINDOWSIZE = "windowsize"  # RFC 7440

BLKSIZE_DEFAULT = 512  # RFC 1350
BLKSIZE_MIN, BLKSIZE_MAX = 8, 65464  # RFC 2348: 65464 + 4 + 8 + 20 fits one IPv4 datagram
TIMEOUT_MIN, TIMEOUT_MAX = 1, 255  # RFC 2349, seconds
WINDOWSIZE_MIN, WINDOWSIZE_MAX = 1, 65535  # RFC 7440

MODES = ("octet", "netascii")  # "mail" is obsolete (RFC 1350) and refused

_DIGITS = re.compile(rb"[0-9]{1,10}\Z")  # int() would also take " 12", "1_0" and non-ASCII digits
_pack_hh = struct.Struct("!HH").pack
_pack_h = struct.Struct("!H").pack
unpack_hh = struct.Struct("!HH").unpack_from


@dataclass(frozen=True, slots=True)
class Request:
    """A well-formed RRQ or WRQ. `filename` is the raw bytes; options keep the client's order."""

    opcode: int
    filename: bytes
    mode: str
    options: tuple[tuple[str, bytes], ...] = ()


@dataclass(frozen=True, slots=True)
class BadPacket:
    """A datagram that is not a request; `reply` says whether an ERROR should answer it."""

    reason: str
    reply: bool = True


def parse_request(datagram: bytes) -> Request | BadPacket:
    """Decode a datagram that arrived on the listening port."""
    if len(datagram) < 2:
        return BadPacket(f"{len(datagram)}-byte datagram")
    (opcode,) = struct.unpack_from("!H", datagram)
    if opcode == OP_ERROR:
        return BadPacket("ERROR on the listening port", reply=False)  # never answer an error
    if opcode not in (OP_RRQ, OP_WRQ):
        return BadPacket(f"opcode {opcode} on the listening port")
    fields = datagram[2:].split(b"\0")
    # A well-formed request ends with NUL, so split() leaves a final empty field.
    if len(fields) < 3:
        return BadPacket("filename or mode not NUL-terminated")
    filename, mode_raw, rest = fields[0], fields[1], fields[2:]
    if not filename:
        return BadPacket("empty filename")
    mode = mode_raw.decode("ascii", "replace").lower()
    # Options: pairs of NUL-terminated strings. An unterminated last field or a name without
    # a value is dropped rather than refusing the whole request (some ROMs pad the packet).
    rest.pop()
    options = []
    for i in range(0, len(rest) - 1, 2):
        name = rest[i].decode("ascii", "replace").lower()
        if name:
            options.append((name, rest[i + 1]))
    return Request(opcode, filename, mode, tuple(options))


def _number(raw: bytes, lo: int, hi: int | None) -> int | None:
    if not _DIGITS.match(raw):
        return None
    value = int(raw)
    if value < lo or (hi is not None and value > hi):
        return None
    return value


@dataclass(frozen=True, slots=True)
class Limits:
    """What the server is willing to grant, whatever a client asks for."""

    max_blksize: int = BLKSIZE_MAX
    max_windowsize: int = 64


@dataclass(slots=True)
class Negotiated:
    """The outcome of option negotiation (RFC 2347): values to use and the OACK to send."""

    blksize: int = BLKSIZE_DEFAULT
    windowsize: int = 1
    timeout: float | None = None  # client-asked retransmission interval, seconds
    acked: dict[str, str] = field(default_factory=dict)  # options to echo in the OACK


def negotiate(options: tuple[tuple[str, bytes], ...], size: int, limits: Limits) -> Negotiated:
    """Accept, clamp or ignore each option. Invalid values are ignored, never fatal (RFC 2347)."""
    result = Negotiated()
    for name, raw in options:
        if name == OPT_BLKSIZE:
            # RFC 2348: 8..65464; a larger request may be answered with a smaller size.
            value = _number(raw, BLKSIZE_MIN, None)
            if value is not None:
                result.blksize = min(value, limits.max_blksize, BLKSIZE_MAX)
                result.acked[name] = str(result.blksize)
        elif name == OPT_TSIZE:
            # RFC 2349: a reading client sends 0 and the server answers with the size.
            if _number(raw, 0, None) is not None:
                result.acked[name] = str(size)
        elif name == OPT_TIMEOUT:
            # RFC 2349: the server must echo the exact value or leave it out.
            value = _number(raw, TIMEOUT_MIN, TIMEOUT_MAX)
            if value is not None:
                result.timeout = float(value)
                result.acked[name] = str(value)
        elif name == OPT_WINDOWSIZE:
            # RFC 7440: the server may answer with a smaller window.
            value = _number(raw, WINDOWSIZE_MIN, WINDOWSIZE_MAX)
            if value is not None:
                result.windowsize = min(value, limits.max_windowsize)
                result.acked[name] = str(result.windowsize)
    return result


def encode_oack(acked: dict[str, str]) -> bytes:
    """RFC 2347 OACK: opcode 6, then `option NUL value NUL` for every acknowledged option, in order."""
    return _pack_h(OP_OACK) + b"".join(f"{k}\0{v}\0".encode("ascii") for k, v in acked.items())


def encode_error(code: int, message: str) -> bytes:
    # tftpy's TftpPacketERR can only send its fixed texts, and has none for code 0.
    return _pack_hh(OP_ERROR, code) + message.encode("ascii", "replace")[:200] + b"\0"


def data_header(block: int) -> bytes:
    return _pack_hh(OP_DATA, block & 0xFFFF)  # block numbers roll over to 0 past 65535


def to_netascii(data: bytes) -> bytes:
    """RFC 764 / RFC 1350 netascii: CR becomes CR NUL, LF becomes CR LF."""
    return data.replace(b"\r", b"\r\0").replace(b"\n", b"\r\n")
