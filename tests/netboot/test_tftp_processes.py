"""The TFTP server as several processes on one port (SO_REUSEPORT): every process serves, the
transfers stay whole, junk on the port disturbs nobody, and no process outlives the server."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from provisioner.netboot.tftp import TftpServer
from provisioner.netboot.tftp_client import fetch, fetch_many

REPO = Path(__file__).resolve().parents[2]


def who_served(name: str, _client: tuple[str, int]) -> bytes | None:
    """The resolver: names the process that rendered the answer."""
    return f"pid {os.getpid()}\n".encode() if name.startswith("who-") else None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


def wait_until(predicate, seconds: float = 30.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tftp-processes")
    (root / "big.bin").write_bytes(os.urandom(200_000))
    return root


def test_every_process_serves_and_none_is_left_after_stop(root):
    server = TftpServer(root, who_served, port=0, processes=2, loops=1).start()
    try:
        # Each request comes from its own source port; the kernel spreads them over the processes.
        results = fetch_many("127.0.0.1", server.port, [f"who-{i}" for i in range(40)])
        pids = {int(r.data.split()[1]) for r in results}
        big = fetch_many("127.0.0.1", server.port, ["big.bin"] * 20, blksize=1468, windowsize=4)
    finally:
        server.stop()
    assert len(pids) == 2 and os.getpid() in pids
    digest = hashlib.sha256((root / "big.bin").read_bytes()).hexdigest()
    assert [hashlib.sha256(r.data or b"").hexdigest() for r in big] == [digest] * 20
    (child,) = pids - {os.getpid()}
    assert wait_until(lambda: not alive(child))


def test_junk_on_the_port_disturbs_no_transfer_in_any_process(root):
    with TftpServer(root, port=0, processes=2, loops=1, timeout=0.5) as server:
        junk = [b"", b"\x00", b"\x00\x01", b"\x00\x01big.bin", b"\x00\x02x\x00octet\x00",
                b"\x00\x01big.bin\x00octet\x00blksize\x00abc\x00", b"\xff" * 600,
                b"\x00\x01" + "é".encode() * 300 + b"\x00octet\x00"]
        senders = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(16)]
        for s in senders:  # several source ports: the junk reaches both processes
            for packet in junk:
                s.sendto(packet, ("127.0.0.1", server.port))
        results = fetch_many("127.0.0.1", server.port, ["big.bin"] * 16, blksize=512)
        for s in senders:
            s.close()
        assert [r.data for r in results] == [(root / "big.bin").read_bytes()] * 16


def test_the_command_line_serves_with_processes_and_its_copies_die_with_it(root):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "provisioner.netboot.tftp", "--root", str(root),
                             "--bind", f"127.0.0.1:{port}", "--processes", "3"],
                            cwd=REPO, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_until(lambda: _answers(port)), "the server did not start"
        assert fetch("127.0.0.1", port, "big.bin", blksize=1468) == (root / "big.bin").read_bytes()
        listing = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
        assert wait_until(lambda: len(listing.read_text().split()) == 2)  # a copy may answer before the last fork
        children = [int(p) for p in listing.read_text().split()]
        proc.send_signal(signal.SIGKILL)  # no clean-up: the kernel must end the copies
        proc.wait()
        assert wait_until(lambda: not any(alive(c) for c in children))
        assert not _answers(port)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()


def _answers(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        s.sendto(b"\x00\x01nothing-here\x00octet\x00", ("127.0.0.1", port))
        try:
            return s.recv(1024)[:2] == b"\x00\x05"
        except (TimeoutError, ConnectionRefusedError):
            return False
