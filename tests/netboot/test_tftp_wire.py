"""The pure parts of the TFTP server: request parsing, option negotiation, names, the transfer state machine."""

from __future__ import annotations

import pytest
from tftpy.TftpPacketTypes import TftpPacketRRQ

from provisioner.netboot import tftp_wire as wire
from provisioner.netboot.tftp_files import Refusal, normalise
from provisioner.netboot.tftp_transfer import DONE, GIVE_UP, IGNORE, SEND, Transfer

LIMITS = wire.Limits()


def rrq(name: str, **options) -> bytes:
    packet = TftpPacketRRQ()
    packet.filename, packet.mode, packet.options = name, "octet", options
    return packet.encode().buffer


def test_a_request_encoded_by_tftpy_parses_back_with_its_options_in_order():
    req = wire.parse_request(rrq("pxelinux.0", blksize="1468", tsize="0"))
    assert req == wire.Request(wire.OP_RRQ, b"pxelinux.0", "octet", (("blksize", b"1468"), ("tsize", b"0")))


@pytest.mark.parametrize("datagram, reason", [
    (b"", "0-byte datagram"),
    (b"\x00", "1-byte datagram"),
    (b"\x00\x01a", "filename or mode not NUL-terminated"),
    (b"\x00\x01file\x00octet", "filename or mode not NUL-terminated"),
    (b"\x00\x01\x00octet\x00", "empty filename"),
    (b"\x00\x09abc\x00", "opcode 9 on the listening port"),
    (b"\x00\x04\x00\x01", "opcode 4 on the listening port"),
])
def test_malformed_datagrams_become_bad_packets_with_a_reason(datagram, reason):
    assert wire.parse_request(datagram) == wire.BadPacket(reason)


def test_an_error_on_the_listening_port_is_never_answered():
    assert wire.parse_request(b"\x00\x05\x00\x00oops\x00").reply is False


def test_options_without_their_closing_nul_are_dropped_not_fatal():
    req = wire.parse_request(b"\x00\x01f\x00octet\x00blksize\x001468\x00tsize\x000")
    assert req.options == (("blksize", b"1468"),)


def test_option_names_and_mode_are_case_insensitive():
    req = wire.parse_request(b"\x00\x01f\x00OCTET\x00BlkSize\x00800\x00")
    assert (req.mode, req.options) == ("octet", (("blksize", b"800"),))


@pytest.mark.parametrize("raw, granted", [
    (b"1468", "1468"),
    (b"8", "8"),
    (b"65464", "65464"),
    (b"70000", "65464"),  # RFC 2348: answer with the largest size we can do
    (b"4294967296", "65464"),
    (b"7", None),  # below the RFC minimum: ignored
    (b"abc", None),
    (b" 12", None),
    (b"-1", None),
    (b"\xd9\xa1\xd9\xa2", None),  # Arabic-Indic digits, which int() would accept
    (b"", None),
])
def test_blksize_is_clamped_or_ignored_never_fatal(raw, granted):
    neg = wire.negotiate((("blksize", raw),), 100, LIMITS)
    assert neg.acked.get("blksize") == granted
    assert neg.blksize == (int(granted) if granted else 512)


def test_tsize_is_answered_with_the_size_of_what_will_be_sent():
    assert wire.negotiate((("tsize", b"0"),), 12345, LIMITS).acked == {"tsize": "12345"}


@pytest.mark.parametrize("raw, granted", [(b"1", "1"), (b"255", "255"), (b"0", None), (b"256", None)])
def test_timeout_is_echoed_exactly_inside_1_to_255_or_left_out(raw, granted):
    assert wire.negotiate((("timeout", raw),), 1, LIMITS).acked.get("timeout") == granted


@pytest.mark.parametrize("raw, granted", [(b"4", "4"), (b"65535", "64"), (b"0", None), (b"65536", None)])
def test_windowsize_is_capped_at_the_server_limit(raw, granted):
    assert wire.negotiate((("windowsize", raw),), 1, LIMITS).acked.get("windowsize") == granted


def test_unknown_options_are_left_out_of_the_oack():
    assert wire.negotiate((("multicast", b""), ("utimeout", b"10")), 1, LIMITS).acked == {}


@pytest.mark.parametrize("acked", [{}, {"blksize": "1468"}, {"tsize": "1048576", "blksize": "8192",
                                                                 "timeout": "3", "windowsize": "4"}])
def test_our_oack_is_byte_for_byte_tftpys(acked):
    from tftpy.TftpPacketTypes import TftpPacketOACK

    packet = TftpPacketOACK()
    packet.options = dict(acked)
    assert wire.encode_oack(acked) == packet.encode().buffer


def test_the_server_starts_without_importing_tftpy():
    import subprocess
    import sys

    code = "import sys, provisioner.netboot.tftp; print(any(m.startswith('tftpy') for m in sys.modules))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.stdout.strip() == "False", r.stderr


def test_error_packets_carry_any_code_and_message():
    assert wire.encode_error(0, "render error") == b"\x00\x05\x00\x00render error\x00"


def test_netascii_turns_lf_into_crlf_and_bare_cr_into_cr_nul():
    assert wire.to_netascii(b"a\nb\rc\r\n") == b"a\r\nb\r\0c\r\0\r\n"


@pytest.mark.parametrize("raw, name", [
    (b"pxelinux.0", "pxelinux.0"),
    (b"/pxelinux.cfg/01-aa-bb-cc-dd-ee-ff", "pxelinux.cfg/01-aa-bb-cc-dd-ee-ff"),
    (b"\\boot\\x64\\wdsnbp.com", "boot/x64/wdsnbp.com"),
    (b"./a//b/./c", "a/b/c"),
    ("caf\u00e9.cfg".encode(), "caf\u00e9.cfg"),
])
def test_names_are_normalised_to_a_clean_relative_path(raw, name):
    assert normalise(raw) == name


@pytest.mark.parametrize("raw", [b"../etc/passwd", b"a/../../b", b"..\\..\\x", b"\xff\xfe", b"a\x01b", b"/", b"."])
def test_traversal_undecodable_and_empty_names_are_refused(raw):
    assert isinstance(normalise(raw), Refusal)


# -- the transfer state machine --------------------------------------------------------------

def transfer(size: int, *, blksize=512, windowsize=1, oack=None, rto=1.0, retries=3) -> Transfer:
    return Transfer(("10.0.0.9", 2000), "f", b"x" * size, blksize=blksize, windowsize=windowsize,
                    oack=oack, rto=rto, max_rto=4.0, retries=retries)


def test_a_file_that_fills_its_last_block_ends_with_an_empty_block():
    assert transfer(1024).last_block == 3
    assert transfer(1023).last_block == 2
    assert transfer(0).last_block == 1


def test_an_oack_is_block_0_and_ack_0_starts_the_data():
    t = transfer(2000, oack=b"oack", windowsize=4)
    assert t.begin(0.0) == SEND and (t.next_send, t.window_hi) == (0, 0)
    assert t.on_ack(0, 0.001) == SEND and (t.next_send, t.window_hi) == (1, 4)
    assert t.on_ack(4, 0.002) == DONE


def test_the_first_oack_waits_two_timeouts_before_it_is_resent():
    t = transfer(2000, oack=b"oack", rto=1.0)
    t.begin(0.0)
    assert t.deadline == 2.0  # the client's own retransmission (ACK 0 or RRQ) should come first
    assert t.on_timer(2.0) == SEND and (t.next_send, t.window_hi) == (0, 0) and t.deadline == 4.0


def test_a_partial_ack_restarts_the_window_after_the_acknowledged_block():
    t = transfer(10 * 512, windowsize=4)
    t.begin(0.0)
    assert t.on_ack(2, 0.01) == SEND and (t.next_send, t.window_hi) == (3, 6)


def test_retransmission_backs_off_exponentially_then_gives_up_and_progress_resets_it():
    t = transfer(5000, rto=1.0, retries=3)
    t.begin(0.0)
    assert t.deadline == 1.0
    assert t.on_timer(1.0) == SEND and t.deadline == 3.0
    assert t.on_timer(3.0) == SEND and t.deadline == 7.0
    assert t.on_ack(1, 7.5) == SEND and t.deadline == 8.5  # progress: back to 1 s
    t.on_timer(8.5), t.on_timer(10.5), t.on_timer(14.5)
    assert t.deadline == 18.5  # capped at max_rto = 4 s
    assert t.on_timer(18.5) == GIVE_UP


def test_a_duplicate_ack_resends_the_window_but_not_an_echo_right_after_sending():
    t = transfer(50 * 512)
    t.begin(0.0)
    t.on_ack(1, 0.001)  # srtt = 1 ms, so the hold-off is 10 ms
    assert t.on_ack(1, 0.002) == IGNORE  # the echo of a duplicated DATA: answering doubles traffic
    assert t.on_ack(1, 0.250) == SEND and (t.next_send, t.window_hi) == (2, 2)  # iPXE re-ACK
    assert t.on_ack(1, 0.251) == IGNORE


def test_block_numbers_roll_over_past_65535():
    t = transfer(70000 * 8, blksize=8)
    t.begin(0.0)
    t.base, t.window_hi = 65535, 65535
    assert t.on_ack(65535, 1.0) in (IGNORE, SEND)  # a duplicate, not progress
    t.window_hi = 65536
    assert t.on_ack(0, 1.0) == SEND and t.base == 65536 and t.next_send == 65537


def test_an_ack_for_a_block_never_sent_is_ignored():
    t = transfer(50 * 512)
    t.begin(0.0)
    assert t.on_ack(7, 0.1) == IGNORE and t.base == 0
