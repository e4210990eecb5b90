"""No single datagram stops the TFTP server: each bad input is answered (or ignored) and the
next good transfer still arrives intact. Also a property-based fuzz of random datagrams."""

from __future__ import annotations

import hashlib
import os
import socket
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from provisioner.netboot.tftp import TftpServer
from provisioner.netboot.tftp_client import fetch

OACK, DATA, ERROR = 6, 3, 5
NOT_DEFINED, NOT_FOUND, ACCESS, ILLEGAL = 0, 1, 2, 4


def resolver(name: str, client: tuple[str, int]) -> bytes | None:
    if name == "explode.cfg":
        raise KeyError("missing template variable")
    if name == "not-bytes.cfg":
        return "a str, not bytes"  # type: ignore[return-value]
    return b"#!ipxe\n" if name.startswith("boot-") else None


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tftproot")
    (root / "big.bin").write_bytes(os.urandom(200_000))
    (root / "small.bin").write_bytes(os.urandom(3000))
    (root / "caf\u00e9.bin").write_bytes(b"accented")
    (root / "sub").mkdir()
    (root / "sub" / "inner.bin").write_bytes(b"inner")
    (root / "escape").symlink_to("/etc/passwd")
    (root / "escdir").symlink_to("/etc")
    (root / "dangling").symlink_to(root / "nothing-here")
    (root / "inside-link").symlink_to(root / "sub" / "inner.bin")
    os.mkfifo(root / "fifo")
    return root


@pytest.fixture(scope="module")
def server(root: Path):
    with TftpServer(root, resolver, port=0, timeout=0.5) as s:
        yield s


def assert_still_serving(server: TftpServer, root: Path) -> None:
    data = fetch("127.0.0.1", server.port, "big.bin", blksize=1468, timeout=0.5)
    assert hashlib.sha256(data).hexdigest() == hashlib.sha256((root / "big.bin").read_bytes()).hexdigest()
    assert server._thread is not None and server._thread.is_alive()


def request(opcode: int, name: bytes, mode: bytes = b"octet", *options: bytes) -> bytes:
    return struct.pack("!H", opcode) + b"\0".join((name, mode, *options)) + b"\0"


def send(server: TftpServer, datagram: bytes, wait: float = 1.0) -> bytes | None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(wait)
    try:
        s.sendto(datagram, ("127.0.0.1", server.port))
        return s.recv(65536)
    except TimeoutError:
        return None
    finally:
        s.close()


def kind(reply: bytes | None) -> tuple[int, int] | None:
    return struct.unpack("!HH", reply[:4]) if reply else None


RRQ, WRQ = 1, 2
CASES = {
    # name: (datagram, expected (opcode, code-or-block), text expected in the reply)
    "blksize above 65464 is clamped": (request(RRQ, b"big.bin", b"octet", b"blksize", b"70000"),
                                       (OACK, None), b"blksize\x0065464\x00"),
    "blksize abc is ignored": (request(RRQ, b"big.bin", b"octet", b"blksize", b"abc"), (DATA, 1), b""),
    "blksize 7 is ignored": (request(RRQ, b"big.bin", b"octet", b"blksize", b"7"), (DATA, 1), b""),
    "options without closing NUL": (b"\x00\x01big.bin\x00octet\x00blksize\x001468", (DATA, 1), b""),
    "option name without a value": (b"\x00\x01big.bin\x00octet\x00tsize\x00", (DATA, 1), b""),
    "3-byte packet": (b"\x00\x01x", (ERROR, ILLEGAL), b""),
    "1-byte packet": (b"\x01", (ERROR, ILLEGAL), b""),
    "empty datagram": (b"", (ERROR, ILLEGAL), b""),
    "a directory": (request(RRQ, b"sub"), (ERROR, NOT_FOUND), b""),
    "non-ASCII name that does not exist": (request(RRQ, "n\u00efx.bin".encode()), (ERROR, NOT_FOUND), b""),
    "name that is not UTF-8": (request(RRQ, b"\xff\xfe\x80.bin"), (ERROR, NOT_FOUND), b""),
    "control character in name": (request(RRQ, b"big\x07.bin"), (ERROR, NOT_FOUND), b""),
    "../ traversal": (request(RRQ, b"../../../../etc/passwd"), (ERROR, ACCESS), b""),
    "backslash traversal": (request(RRQ, b"sub\\..\\..\\etc\\passwd"), (ERROR, ACCESS), b""),
    "absolute path stays in the root": (request(RRQ, b"/etc/passwd"), (ERROR, NOT_FOUND), b""),
    "symlink to a file outside the root": (request(RRQ, b"escape"), (ERROR, ACCESS), b""),
    "symlink to a directory outside the root": (request(RRQ, b"escdir/passwd"), (ERROR, ACCESS), b""),
    "dangling symlink": (request(RRQ, b"dangling"), (ERROR, NOT_FOUND), b""),
    "a FIFO (would block a naive open)": (request(RRQ, b"fifo"), (ERROR, NOT_FOUND), b""),
    "write request": (request(WRQ, b"new.bin"), (ERROR, ACCESS), b""),
    "write request over an existing file": (request(WRQ, b"big.bin"), (ERROR, ACCESS), b""),
    "unknown opcode": (b"\x00\x63whatever\x00", (ERROR, ILLEGAL), b""),
    "ACK on the listening port": (b"\x00\x04\x00\x01", (ERROR, ILLEGAL), b""),
    "DATA on the listening port": (b"\x00\x03\x00\x01abc", (ERROR, ILLEGAL), b""),
    "mode mail": (request(RRQ, b"big.bin", b"mail"), (ERROR, ILLEGAL), b""),
    "unknown mode": (request(RRQ, b"big.bin", b"binary"), (ERROR, ILLEGAL), b""),
    "resolver raises": (request(RRQ, b"explode.cfg"), (ERROR, NOT_DEFINED), b"render error"),
    "resolver returns a str": (request(RRQ, b"not-bytes.cfg"), (ERROR, NOT_DEFINED), b"render error"),
    "windowsize 0 and timeout 0 are ignored": (
        request(RRQ, b"big.bin", b"octet", b"windowsize", b"0", b"timeout", b"0"), (DATA, 1), b""),
    "1,000 options": (request(RRQ, b"big.bin", b"octet", *([b"x", b"1"] * 1000), b"tsize", b"0"),
                      (OACK, None), b"tsize\x00200000\x00"),
    "a 65,000-byte filename": (request(RRQ, b"a" * 65000), (ERROR, NOT_FOUND), b""),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_one_bad_datagram_gets_its_answer_and_the_server_keeps_serving(server, root, case):
    datagram, (op, code), text = CASES[case]
    reply = send(server, datagram)
    assert reply is not None, "no reply"
    got = kind(reply)
    assert got[0] == op and (code is None or got[1] == code), reply[:80]
    assert text in reply
    assert_still_serving(server, root)


def test_an_error_sent_to_the_listening_port_is_not_answered(server, root):
    assert send(server, b"\x00\x05\x00\x00oops\x00", wait=0.3) is None
    assert_still_serving(server, root)


@pytest.mark.parametrize("name, content", [("caf\u00e9.bin", b"accented"), ("inside-link", b"inner"),
                                           ("sub/inner.bin", b"inner"), ("boot-aa-bb.ipxe", b"#!ipxe\n")])
def test_utf8_names_and_symlinks_within_the_root_are_served(server, name, content):
    assert fetch("127.0.0.1", server.port, name) == content


def test_junk_sent_into_a_live_transfer_does_not_derail_it(server, root):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    s.sendto(request(RRQ, b"small.bin"), ("127.0.0.1", server.port))
    packet, tid = s.recvfrom(1024)
    received, block = b"", 1
    while True:
        assert kind(packet) == (DATA, block)
        received += packet[4:]
        for junk in (b"", b"\x00", b"\x00\x04\x00", b"\x00\x03\x00\x09zz", b"\x00\x63\x00\x00",
                     b"\x00\x04\xff\xff", b"\x00\x01big.bin\x00octet\x00"):
            s.sendto(junk, tid)
        s.sendto(struct.pack("!HH", 4, block), tid)
        if len(packet) < 516:
            break
        block += 1
        packet = s.recv(1024)
        while kind(packet) == (DATA, block - 1):  # a resend provoked by the junk duplicate ACK
            packet = s.recv(1024)
    assert received == (root / "small.bin").read_bytes()
    assert_still_serving(server, root)


# -- property-based fuzz ---------------------------------------------------------------------

names = st.one_of(st.sampled_from([b"big.bin", b"small.bin", b"sub", b"escape", b"fifo", b"../x",
                                   b"explode.cfg", b"boot-1.ipxe", b"", b"/", b"caf\xc3\xa9.bin"]),
                  st.binary(max_size=40))
option_names = st.one_of(st.sampled_from([b"blksize", b"tsize", b"timeout", b"windowsize", b"BLKSIZE"]),
                         st.binary(max_size=12))
option_values = st.one_of(st.integers(-5, 70000).map(lambda n: str(n).encode()), st.binary(max_size=12))
structured = st.builds(
    lambda op, name, mode, opts, cut: (struct.pack("!H", op) + b"\0".join(
        [name, mode] + [x for pair in opts for x in pair]) + b"\0")[: len(name) + 2 + cut],
    st.integers(0, 8), names, st.sampled_from([b"octet", b"netascii", b"OCTET", b"mail", b"", b"\xff"]),
    st.lists(st.tuples(option_names, option_values), max_size=5), st.integers(0, 200))
datagrams = st.one_of(st.binary(max_size=600), structured)


@settings(max_examples=800, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(batch=st.lists(datagrams, min_size=1, max_size=3), into_session=st.booleans())
def test_random_datagrams_interleaved_with_good_transfers_never_break_the_server(server, root, batch,
                                                                                   into_session):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        target = ("127.0.0.1", server.port)
        if into_session:  # aim at a live transfer's socket instead of the listening one
            s.settimeout(1)
            s.sendto(request(RRQ, b"small.bin"), target)
            _, target = s.recvfrom(1024)
        for datagram in batch:
            s.sendto(datagram, target)
    finally:
        s.close()  # transfers it started end on ICMP port unreachable or by timeout
    assert fetch("127.0.0.1", server.port, "small.bin", timeout=0.5) == (root / "small.bin").read_bytes()


def test_after_the_fuzz_a_large_transfer_is_still_intact(server, root):
    assert_still_serving(server, root)
