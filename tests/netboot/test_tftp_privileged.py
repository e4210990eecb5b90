"""TFTP tests that need root: network namespaces with nftables (loss, send errors), the
wildcard address, and a server that dropped its privileges. The server runs as a real process,
`python -m provisioner.netboot.tftp`, inside a namespace created and deleted by the test."""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from helpers import need_root, need_tool

_names = itertools.count()


@contextmanager
def netns() -> Iterator[str]:
    """A fresh network namespace with only `lo`, up; deleted afterwards."""
    need_root()
    need_tool("ip", "nft")
    name = f"tftp-test-{os.getpid()}-{next(_names)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def nft(ns: str, ruleset: str) -> None:
    subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=ruleset, text=True, check=True)


class ServerProcess:
    """`python -m provisioner.netboot.tftp` in a subprocess; its log lines are collected."""

    def __init__(self, root: Path, *, ns: str | None = None, bind: str = "127.0.0.1:0", extra: tuple = ()):
        cmd = [sys.executable, "-m", "provisioner.netboot.tftp", "--root", str(root), "--bind", bind, *extra]
        if ns:
            cmd = ["ip", "netns", "exec", ns, *cmd]
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        started = threading.Event()
        self.port = 0

        def read() -> None:
            for line in self.proc.stderr:
                self.lines.append(line)
                if m := re.search(r"tftp\.start .* port=(\d+)", line):
                    self.port = int(m.group(1))
                    started.set()
            started.set()

        threading.Thread(target=read, daemon=True).start()
        started.wait(10)
        assert self.port, "server did not start:\n" + "".join(self.lines)

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def world_readable_root() -> Iterator[Path]:
    # Not under pytest's tmp_path: that is mode 700, and some servers here run as nobody.
    root = Path(tempfile.mkdtemp(prefix="tftp-root-", dir="/tmp"))
    root.chmod(0o755)
    payload = os.urandom(1 << 20)
    (root / "ipxe.efi").write_bytes(payload)
    (root / "ipxe.efi").chmod(0o644)
    yield root
    subprocess.run(["rm", "-rf", str(root)], check=False)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


CLIENT = """
import hashlib, socket, sys
from provisioner.netboot.tftp_client import fetch_many
host, port, name, blksize, source_port, timeout, retries = sys.argv[1:8]
if int(source_port):  # a raw client bound to a fixed source port, fire-and-forget
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((host, int(source_port)))
    s.sendto(b"\\x00\\x01" + name.encode() + b"\\x00octet\\x00", (host, int(port)))
    sys.exit(0)
r = fetch_many(host, int(port), [name], blksize=int(blksize) or None, timeout=float(timeout),
               retries=int(retries))[0]
print(hashlib.sha256(r.data).hexdigest() if r.data is not None else "FAILED " + str(r.error))
"""


def netns_client(ns: str, host: str, port: int, name: str, *, blksize: int = 0, source_port: int = 0,
                 timeout: float = 1.0, retries: int = 5) -> str:
    proc = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", CLIENT, host, str(port), name,
                           str(blksize), str(source_port), str(timeout), str(retries)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_twenty_atftp_clients_all_finish_intact_with_half_a_percent_of_datagrams_dropped(
        world_readable_root):
    need_tool("atftp")
    expected = sha((world_readable_root / "ipxe.efi").read_bytes())
    with netns() as ns:
        # 1 in 200 UDP datagrams is dropped on input: both DATA and ACKs get lost, both ways.
        nft(ns, "table inet lossy {\n chain input {\n type filter hook input priority 0; policy accept;\n"
                "  meta l4proto udp numgen random mod 200 0 counter drop\n }\n}\n")
        server = ServerProcess(world_readable_root, ns=ns)
        try:
            outs = [world_readable_root / f"out{i}" for i in range(20)]
            started = time.monotonic()
            clients = [subprocess.Popen(
                ["ip", "netns", "exec", ns, "atftp", "--tftp-timeout", "1", "--option", "blksize 1468",
                 "-g", "-r", "ipxe.efi", "-l", str(out), "127.0.0.1", str(server.port)],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for out in outs]
            results = [c.communicate(timeout=90) for c in clients]
            elapsed = time.monotonic() - started
            failures = [(c.returncode, r[0]) for c, r in zip(clients, results, strict=True) if c.returncode]
            assert not failures, failures
            assert [sha(out.read_bytes()) for out in outs] == [expected] * 20
            dropped = subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "ruleset"],
                                     capture_output=True, text=True).stdout
            packets = int(re.search(r"counter packets (\d+)", dropped).group(1))
            assert packets > 0, "the loss rule dropped nothing"
            assert server.alive()
            print(f"20 x 1 MiB with 0.5% loss: {elapsed:.1f} s, {packets} datagrams dropped")
            assert elapsed < 60  # ~10-15 s on an idle 2-CPU machine; each loss costs ~1 s
        finally:
            server.stop()


def test_a_send_error_fails_only_that_client(world_readable_root):
    expected = sha((world_readable_root / "ipxe.efi").read_bytes())
    with netns() as ns:
        # An output-hook drop makes the server's send() fail with EPERM (it crashed tftpy).
        nft(ns, "table inet blocked {\n chain output {\n type filter hook output priority 0; policy accept;\n"
                "  udp dport 40001 drop\n }\n}\n")
        server = ServerProcess(world_readable_root, ns=ns, extra=("--timeout", "0.2", "--retries", "2"))
        try:
            netns_client(ns, "127.0.0.1", server.port, "missing", source_port=40001)  # an ERROR reply
            netns_client(ns, "127.0.0.1", server.port, "ipxe.efi", source_port=40001)  # a transfer
            deadline = time.monotonic() + 5
            while "send failed" not in server.log and time.monotonic() < deadline:
                time.sleep(0.05)
            assert re.search(r"tftp\.drop client=127\.0\.0\.1:40001 reason=send failed: Operation not permitted",
                             server.log), server.log
            assert "reason=error reply not sent: Operation not permitted" in server.log
            assert netns_client(ns, "127.0.0.1", server.port, "ipxe.efi", blksize=1468) == expected
            # The blocked transfer times out after 0.2 + 0.4 + 0.8 s and is dropped cleanly.
            deadline = time.monotonic() + 5
            while "reason=timeout" not in server.log and time.monotonic() < deadline:
                time.sleep(0.05)
            assert "client=127.0.0.1:40001 reason=timeout after 2 retransmissions" in server.log, server.log
            assert netns_client(ns, "127.0.0.1", server.port, "ipxe.efi", blksize=8192) == expected
            assert server.alive() and "Traceback" not in server.log
        finally:
            server.stop()


def test_on_the_wildcard_address_replies_come_from_the_address_the_client_asked(world_readable_root):
    probe = """
import socket, sys
for ip in ("127.0.0.1", "127.0.0.7"):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
    s.sendto(b"\\x00\\x01ipxe.efi\\x00octet\\x00", (ip, int(sys.argv[1])))
    data, addr = s.recvfrom(1024)
    print(ip, addr[0], data[:4].hex())
"""
    with netns() as ns:
        server = ServerProcess(world_readable_root, ns=ns, bind="0.0.0.0:0")
        try:
            out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", probe, str(server.port)],
                                 capture_output=True, text=True, timeout=10)
            assert out.stdout.split("\n")[:2] == ["127.0.0.1 127.0.0.1 00030001", "127.0.0.7 127.0.0.7 00030001"], \
                out.stdout + out.stderr
        finally:
            server.stop()


def test_a_file_the_server_may_not_read_is_refused_and_serving_goes_on(world_readable_root):
    # Root reads everything, so the server drops to nobody after binding (--user), as in.tftpd -u does.
    need_root()
    secret = world_readable_root / "secret.bin"
    secret.write_bytes(b"root only")
    secret.chmod(0o000)
    expected = sha((world_readable_root / "ipxe.efi").read_bytes())
    server = ServerProcess(world_readable_root, extra=("--user", "nobody"))
    try:
        from provisioner.netboot.tftp_client import TftpFetchError, fetch

        with pytest.raises(TftpFetchError) as err:
            fetch("127.0.0.1", server.port, "secret.bin")
        assert err.value.code == 2
        assert "reason=read: Permission denied" in server.log
        assert sha(fetch("127.0.0.1", server.port, "ipxe.efi", blksize=1468)) == expected
        assert server.alive()
    finally:
        server.stop()
