"""The TFTP server over real sockets on loopback: files, resolver, options, timers, lifecycle."""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import struct
import threading
import time
from pathlib import Path

import pytest
from tftpy import TftpClient
from tftpy.TftpPacketTypes import TftpPacketRRQ, TftpPacketWRQ

from provisioner.netboot.tftp import TftpServer
from provisioner.netboot.tftp_client import TftpFetchError, fetch, fetch_many

MAC = "aa-bb-cc-dd-ee-ff"
RENDERED = {
    f"pxelinux.cfg/01-{MAC}": b"DEFAULT install\n",
    f"grub.cfg-01-{MAC}": b"set default=0\n",
    f"boot-{MAC}.ipxe": b"#!ipxe\nchain http://10.0.0.1/boot.ipxe?mac=${net0/mac}\n",
}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "small.bin").write_bytes(os.urandom(3000))
    (tmp_path / "big.bin").write_bytes(os.urandom(300_000))
    (tmp_path / "exact.bin").write_bytes(os.urandom(1024))  # fills its last block: empty block follows
    (tmp_path / "empty.bin").write_bytes(b"")
    (tmp_path / "text.cfg").write_bytes(b"line one\nline two\r\n")
    return tmp_path


class Renderer:
    def __init__(self):
        self.calls: list[tuple[str, tuple[str, int]]] = []
        self.slow = threading.Event()

    def __call__(self, name: str, client: tuple[str, int]) -> bytes | None:
        self.calls.append((name, client))
        if name == "explode.cfg":
            raise RuntimeError("template has a typo")
        if name == "slow.cfg":
            self.slow.wait(5)
            return b"slow"
        return RENDERED.get(name)


@pytest.fixture
def renderer() -> Renderer:
    r = Renderer()
    yield r
    r.slow.set()


@pytest.fixture
def server(root: Path, renderer: Renderer):
    with TftpServer(root, renderer, port=0, timeout=0.5) as s:
        yield s


def rrq(name: str, opcode_cls=TftpPacketRRQ, **options) -> bytes:
    packet = opcode_cls()
    packet.filename, packet.mode, packet.options = name, "octet", options
    return packet.encode().buffer


def ack(block: int) -> bytes:
    return struct.pack("!HH", 4, block)


def udp(timeout: float = 2.0) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(timeout)
    return s


def opcode(packet: bytes) -> tuple[int, int]:
    return struct.unpack("!HH", packet[:4])


@pytest.mark.parametrize("blksize", [None, 8, 512, 1468, 8192, 65464])
def test_files_arrive_byte_for_byte_at_every_block_size(server, root, blksize):
    names = ["small.bin", "exact.bin", "empty.bin"] + (["big.bin"] if (blksize or 512) >= 512 else [])
    for name in names:
        data = fetch("127.0.0.1", server.port, name, blksize=blksize, tsize=True)
        assert sha(data) == sha((root / name).read_bytes()), name


def test_block_numbers_roll_over_past_65535_in_a_long_transfer(server, root):
    (root / "long.bin").write_bytes(os.urandom(8 * 65600))
    data = fetch("127.0.0.1", server.port, "long.bin", blksize=8, windowsize=64)
    assert sha(data) == sha((root / "long.bin").read_bytes())


def test_a_window_larger_than_the_socket_buffer_waits_for_room_and_arrives_intact(server, root):
    (root / "huge.bin").write_bytes(os.urandom(3 << 20))  # 48 blocks of 65464: one 64-block window
    data = fetch("127.0.0.1", server.port, "huge.bin", blksize=65464, windowsize=64, timeout=0.3)
    assert sha(data) == sha((root / "huge.bin").read_bytes())


def test_a_full_send_buffer_makes_the_transfer_wait_for_room_then_resume_where_it_stopped(root):
    import select

    from provisioner.netboot.tftp_files import FileSource, Lookups
    from provisioner.netboot.tftp_loop import DropLog, EventLoop, Settings
    from provisioner.netboot.tftp_transfer import Transfer
    from provisioner.netboot.tftp_wire import Limits

    class FullAfterTwo(socket.socket):  # loopback never blocks a UDP send, so fake a busy NIC
        room = 2

        def send(self, data, *args):
            if self.room == 0:
                raise BlockingIOError
            self.room -= 1
            return super().send(data, *args)

    listen, peer = udp(), udp()
    cfg = Settings(lookups=Lookups(FileSource(root, None), 1), host="127.0.0.1", family=socket.AF_INET,
                   timeout=1.0, retries=3, max_backoff=4.0, limits=Limits(), max_sessions=10,
                   resolve_timeout=1.0, drops=DropLog())
    loop = EventLoop(listen, False, cfg)
    sock = FullAfterTwo(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.connect(peer.getsockname())
    sock.setblocking(False)
    tr = Transfer(peer.getsockname(), "f", bytes(range(256)) * 40, blksize=512, windowsize=8, oack=None,
                  rto=1.0, max_rto=4.0, retries=3)
    tr.sock = sock
    loop._watch(sock.fileno(), select.EPOLLIN, tr)
    tr.begin(time.monotonic())
    loop._pump(tr)

    def watched_for_writing() -> bool:  # the socket has room, so epoll reports it iff asked to
        return any(fd == sock.fileno() and mask & select.EPOLLOUT for fd, mask in loop._epoll.poll(0))

    assert tr.next_send == 3 and watched_for_writing()
    sock.room = 100
    loop._on_session(tr, select.EPOLLOUT)  # the socket became writable
    assert tr.next_send == 9 and not watched_for_writing()
    assert [opcode(peer.recv(1024)) for _ in range(8)] == [(3, n) for n in range(1, 9)]
    loop.stop()
    loop.run()  # returns at once and closes its sockets
    cfg.lookups.close()
    sock.close()
    peer.close()


def test_windowsize_4_as_uefi_asks_sends_four_blocks_per_ack(server, root):
    s = udp()
    s.sendto(rrq("big.bin", blksize="1468", tsize="0", windowsize="4"), ("127.0.0.1", server.port))
    oack, tid = s.recvfrom(65536)
    assert oack[:2] == b"\x00\x06" and b"windowsize\x004\x00" in oack and b"tsize\x00300000\x00" in oack
    s.sendto(ack(0), tid)
    blocks = [opcode(s.recvfrom(65536)[0]) for _ in range(4)]
    assert blocks == [(3, 1), (3, 2), (3, 3), (3, 4)]
    data = fetch("127.0.0.1", server.port, "big.bin", blksize=1468, windowsize=4)
    assert sha(data) == sha((root / "big.bin").read_bytes())


def test_a_write_request_is_refused_with_access_violation_and_writes_nothing(server, root):
    s = udp()
    s.sendto(rrq("new.bin", TftpPacketWRQ), ("127.0.0.1", server.port))
    reply = s.recv(1024)
    assert opcode(reply) == (5, 2) and b"Access violation" in reply
    assert not (root / "new.bin").exists()


@pytest.mark.parametrize("name", sorted(RENDERED))
def test_per_mac_names_that_are_not_files_are_rendered_by_the_resolver(server, renderer, name):
    assert fetch("127.0.0.1", server.port, "/" + name) == RENDERED[name]
    assert renderer.calls[-1][0] == name and renderer.calls[-1][1][0] == "127.0.0.1"


def test_a_name_the_resolver_does_not_know_is_file_not_found(server):
    with pytest.raises(TftpFetchError) as err:
        fetch("127.0.0.1", server.port, "pxelinux.cfg/C0A8")
    assert err.value.code == 1


def test_a_regular_file_is_served_without_asking_the_resolver(server, renderer):
    fetch("127.0.0.1", server.port, "small.bin")
    assert renderer.calls == []


def test_a_resolver_that_raises_fails_only_its_own_client_with_render_error(server, root, caplog):
    results = fetch_many("127.0.0.1", server.port, ["explode.cfg", "small.bin", f"boot-{MAC}.ipxe"])
    assert (results[0].data, results[0].code, results[0].error) == (None, 0, "render error")
    assert results[1].data == (root / "small.bin").read_bytes()
    assert results[2].data == RENDERED[f"boot-{MAC}.ipxe"]
    assert "tftp.render_error" in caplog.text and "template has a typo" in caplog.text


def test_a_slow_resolver_does_not_hold_up_other_clients(server, root, renderer):
    blocked = threading.Thread(target=fetch_many, args=("127.0.0.1", server.port, ["slow.cfg"]))
    blocked.start()
    time.sleep(0.05)
    started = time.monotonic()
    results = fetch_many("127.0.0.1", server.port, ["big.bin", f"boot-{MAC}.ipxe"] * 3, blksize=1468)
    assert all(r.data is not None for r in results)
    assert time.monotonic() - started < 1.0
    renderer.slow.set()
    blocked.join()


def test_tftpys_own_client_downloads_from_us(server, root, tmp_path):
    out = tmp_path / "out.bin"
    TftpClient("127.0.0.1", server.port, {"blksize": 1468, "tsize": 0}).download("big.bin", str(out))
    assert sha(out.read_bytes()) == sha((root / "big.bin").read_bytes())


def test_error_8_after_the_oack_ends_the_transfer_quietly_as_edk2_does(server, caplog):
    caplog.set_level(logging.INFO, "provisioner.netboot.tftp")
    s = udp()
    s.sendto(rrq("big.bin", tsize="0", blksize="1468"), ("127.0.0.1", server.port))
    oack, tid = s.recvfrom(1024)
    assert b"tsize\x00300000\x00" in oack
    s.sendto(b"\x00\x05\x00\x08tsize only\x00", tid)
    wait_for(lambda: server.active == 0)
    assert "tftp.abort" in caplog.text and "code=8" in caplog.text
    assert "tftp.drop" not in caplog.text
    s.settimeout(0.7)
    with pytest.raises(TimeoutError):  # no retransmitted OACK after the abort
        s.recv(1024)


def test_a_new_request_from_a_live_sessions_address_starts_over_at_once(server, root, caplog):
    caplog.set_level(logging.INFO, "provisioner.netboot.tftp")
    s = udp()
    s.sendto(rrq("big.bin"), ("127.0.0.1", server.port))
    first, old_tid = s.recvfrom(1024)
    assert opcode(first) == (3, 1)
    # The client "reboots" and asks again from the same port, without finishing.
    started = time.monotonic()
    s.sendto(rrq("small.bin"), ("127.0.0.1", server.port))
    packet, tid = s.recvfrom(1024)
    while tid == old_tid:  # a retransmission from the old session may already be in flight
        packet, tid = s.recvfrom(1024)
    assert time.monotonic() - started < 0.3
    received, block = b"", 1
    while True:
        assert opcode(packet) == (3, block)
        received += packet[4:]
        s.sendto(ack(block), tid)
        if len(packet) < 516:
            break
        block += 1
        packet = s.recv(1024)
    assert received == (root / "small.bin").read_bytes()
    assert "tftp.restart" in caplog.text


def test_a_repeated_request_before_any_ack_is_answered_again_from_the_same_transfer(server, caplog):
    caplog.set_level(logging.INFO, "provisioner.netboot.tftp")
    s = udp()
    s.sendto(rrq("big.bin", blksize="1468"), ("127.0.0.1", server.port))
    first, tid = s.recvfrom(1024)
    time.sleep(0.1)  # the client's retransmission timer fires: it asks again
    s.sendto(rrq("big.bin", blksize="1468"), ("127.0.0.1", server.port))
    again, tid_again = s.recvfrom(1024)
    assert (again, tid_again) == (first, tid)  # the same OACK from the same transfer ID
    assert server.active == 1 and "tftp.restart" not in caplog.text
    s.sendto(ack(0), tid)
    assert opcode(s.recv(2048)) == (3, 1)


def test_with_several_loops_a_client_stays_on_its_loop_so_repeats_and_restarts_still_work(root):
    with TftpServer(root, port=0, loops=3) as server:
        for _ in range(20):
            s = udp()
            s.sendto(rrq("big.bin"), ("127.0.0.1", server.port))
            first, tid = s.recvfrom(1024)
            time.sleep(0.06)
            s.sendto(rrq("big.bin"), ("127.0.0.1", server.port))
            assert s.recvfrom(1024) == (first, tid)
            s.close()
        assert fetch("127.0.0.1", server.port, "small.bin") == (root / "small.bin").read_bytes()


def test_the_same_request_after_progress_is_a_reboot_and_starts_over(server, caplog):
    caplog.set_level(logging.INFO, "provisioner.netboot.tftp")
    s = udp()
    s.sendto(rrq("big.bin"), ("127.0.0.1", server.port))
    _, tid = s.recvfrom(1024)
    s.sendto(ack(1), tid)
    assert opcode(s.recv(1024)) == (3, 2)
    s.sendto(rrq("big.bin"), ("127.0.0.1", server.port))  # iPXE rebooted, same source port
    packet, new_tid = s.recvfrom(1024)
    while new_tid == tid:
        packet, new_tid = s.recvfrom(1024)
    assert opcode(packet) == (3, 1) and "tftp.restart" in caplog.text


def test_an_unanswered_block_is_resent_with_exponential_backoff_then_an_error(root):
    with TftpServer(root, port=0, timeout=0.1, retries=3) as server:
        s = udp(timeout=3.0)
        s.sendto(rrq("small.bin"), ("127.0.0.1", server.port))
        arrivals = []
        while True:
            packet = s.recv(1024)
            arrivals.append(time.monotonic())
            if opcode(packet)[0] == 5:
                break
            assert opcode(packet) == (3, 1)
        gaps = [round(b - a, 2) for a, b in zip(arrivals, arrivals[1:], strict=False)]
        assert len(arrivals) == 5  # first send, 3 retransmissions, the ERROR
        assert gaps == pytest.approx([0.1, 0.2, 0.4, 0.8], abs=0.06)
        assert b"timed out" in packet
        wait_for(lambda: server.active == 0)


def test_a_repeated_ack_gets_the_next_block_resent_at_once_not_after_the_timeout(root):
    with TftpServer(root, port=0, timeout=2.0) as server:
        s = udp()
        s.sendto(rrq("big.bin"), ("127.0.0.1", server.port))
        _, tid = s.recvfrom(1024)
        s.sendto(ack(1), tid)
        assert opcode(s.recv(1024)) == (3, 2)  # "lost"
        time.sleep(0.25)  # iPXE re-ACKs after 0.25 s
        sent = time.monotonic()
        s.sendto(ack(1), tid)
        assert opcode(s.recv(1024)) == (3, 2)
        assert time.monotonic() - sent < 0.1


def test_a_burst_of_duplicate_acks_gets_one_resend_not_one_each(root):
    with TftpServer(root, port=0, timeout=2.0) as server:
        s = udp(timeout=0.3)
        s.sendto(rrq("big.bin"), ("127.0.0.1", server.port))
        _, tid = s.recvfrom(1024)
        time.sleep(0.1)
        for _ in range(6):  # the echo of a duplicated DATA 1 (Sorcerer's Apprentice)
            s.sendto(ack(1), tid)
        received = []
        try:
            while True:
                received.append(opcode(s.recv(1024)))
        except TimeoutError:
            pass
        assert received == [(3, 2)]


def test_stop_is_prompt_with_transfers_in_flight(root):
    server = TftpServer(root, port=0).start()
    clients = [udp() for _ in range(50)]
    for c in clients:
        c.sendto(rrq("big.bin"), ("127.0.0.1", server.port))
    for c in clients:
        c.recv(1024)
    assert server.active == 50
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 0.5
    probe = udp(timeout=0.3)
    probe.sendto(rrq("small.bin"), ("127.0.0.1", server.port))
    with pytest.raises((TimeoutError, ConnectionRefusedError)):
        probe.recv(1024)


def test_serve_forever_serves_on_the_calling_thread_until_stopped(root):
    server = TftpServer(root, port=0)
    port = server.bind()
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    assert fetch("127.0.0.1", port, "small.bin") == (root / "small.bin").read_bytes()
    server.stop()
    thread.join(0.5)
    assert not thread.is_alive()


def test_netascii_mode_sends_crlf_line_ends(server):
    raw = fetch("127.0.0.1", server.port, "text.cfg", mode="netascii")
    assert raw == b"line one\nline two\r\n"  # decoded back by our client


def test_log_lines_carry_stable_keys(server, caplog):
    caplog.set_level(logging.INFO, "provisioner.netboot.tftp")
    fetch("127.0.0.1", server.port, "small.bin", blksize=1468)
    with pytest.raises(TftpFetchError):
        fetch("127.0.0.1", server.port, "../etc/shadow")
    text = caplog.text
    assert "tftp.rrq client=127.0.0.1:" in text and "file=small.bin" in text and "blksize=1468" in text
    assert "tftp.done client=127.0.0.1:" in text and "bytes=3000" in text
    assert "tftp.drop client=127.0.0.1:" in text and "reason='..' in filename" in text


def test_the_listening_socket_gets_a_4_mib_receive_buffer_and_the_fd_limit_is_raised(server):
    import resource

    assert server._loops[0]._sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= 4 << 20
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert soft == hard or hard == resource.RLIM_INFINITY


def test_replies_come_from_the_address_the_server_listens_on(root):
    with TftpServer(root, host="127.0.0.9", port=0) as server:
        s = udp()
        s.sendto(rrq("small.bin"), ("127.0.0.9", server.port))
        _, (ip, port) = s.recvfrom(1024)
        assert ip == "127.0.0.9" and port != server.port


def test_a_server_needs_a_root_or_a_resolver(tmp_path):
    with pytest.raises(ValueError):
        TftpServer(None, None)
    with pytest.raises(NotADirectoryError):
        TftpServer(tmp_path / "missing")


def test_a_resolver_only_server_serves_rendered_names(renderer):
    with TftpServer(None, renderer, port=0) as server:
        assert fetch("127.0.0.1", server.port, f"boot-{MAC}.ipxe") == RENDERED[f"boot-{MAC}.ipxe"]


def wait_for(condition, timeout: float = 2.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "condition not reached"
        time.sleep(0.01)


def test_one_download_resends_its_last_packet_when_a_block_is_lost_and_gives_up_on_silence():
    """`fetch` (one download, as a booting host makes) against a server that loses block 2 once:
    the client's ACK of block 1 goes again after the timeout and the file arrives whole; a server
    that never answers gets the RRQ `retries` more times, then the download fails."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    srv.bind(("127.0.0.1", 0))
    blocks = [b"a" * 512, b"b" * 512, b"c" * 10]
    seen: list[tuple[int, int]] = []

    def serve():
        _, client = srv.recvfrom(1024)  # the RRQ
        srv.sendto(struct.pack("!HH", 3, 1) + blocks[0], client)
        lost = False
        while True:
            packet, _ = srv.recvfrom(1024)
            seen.append(struct.unpack("!HH", packet[:4]))
            n = seen[-1][1] + 1
            if n > len(blocks):
                return
            if n == 2 and not lost:
                lost = True  # block 2 never reaches the client
                continue
            srv.sendto(struct.pack("!HH", 3, n) + blocks[n - 1], client)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    assert fetch("127.0.0.1", srv.getsockname()[1], "f.bin", timeout=0.2, retries=3) == b"".join(blocks)
    t.join(5)
    assert seen == [(4, 1), (4, 1), (4, 2), (4, 3)]  # the ACK of block 1 was resent once
    srv.close()

    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    with pytest.raises(TftpFetchError, match="no answer after 2 retries"):
        fetch("127.0.0.1", silent.getsockname()[1], "f.bin", timeout=0.1, retries=2)
    silent.settimeout(0)
    rrqs = 0
    try:
        while silent.recvfrom(1024):
            rrqs += 1
    except BlockingIOError:
        pass
    assert rrqs == 3  # the RRQ and two resends
    silent.close()
