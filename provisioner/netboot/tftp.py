"""The TFTP server of the netboot service: read-only, epoll loops, many concurrent transfers.

Why not tftpy's server. tftpy 0.8.7 (MIT) was measured against the robustness bar in
/work/shared/research/tftp-pxe-feasibility.md and failed it: each of these single inputs killed
the whole server process -- a blksize above 65464 (sendto EMSGSIZE), blksize "abc"
(ValueError), an options field without its closing NUL or any 3-byte packet (struct.error), a
request naming a directory, a non-ASCII filename (UnicodeDecodeError), an unreadable file
(PermissionError), any sendto error (EPERM from a firewall), and an exception in its
`dyn_file_func`; returning io.BytesIO from `dyn_file_func` crashed it at the end of the
transfer. It accepts uploads by default, follows symlinks out of the root (abspath, not
realpath), ignores the timeout and windowsize options (UEFI asks for windowsize 4), resends
only after 5 s and ignores duplicate ACKs (7.8 s to recover one lost block behind iPXE), spends
all retries at once under load, ignores a new request from the address of a live session for
~8 s (iPXE reuses source ports across reboots), uses select() (fails past fd 1024, ~510
sessions), scans every session on every packet, answered ~256 of 1,100 simultaneous requests
(small receive buffer), and reads files and calls `dyn_file_func` on its only thread.

So the serving engine is ours: `selectors` (epoll) with one UDP socket per transfer, found by
the selector key (O(1) per packet); retransmission timers in a heap; file reads and resolver
calls on worker threads; every handler wrapped so that one bad session or datagram costs only
itself; optionally several loops, and several processes, on one port (SO_REUSEPORT). From tftpy we keep the packet
classes (OACK encoding here; RRQ/WRQ encoding and its TftpClient in the tests).

Modules: tftp (this: the server's API and command line), tftp_loop (one event loop),
tftp_transfer (the per-transfer state machine), tftp_wire (packets, options), tftp_files
(names -> bytes, on worker threads), tftp_client (a concurrent client for checks and load tests).

Behaviour worth knowing: retransmission after `timeout` (1 s), doubling up to 8 s, reset by
progress, then an ERROR; a repeated last ACK resends the window at once, but not an echo that
comes within two round trips (Sorcerer's Apprentice); the first OACK waits two timeouts, since
atftp aborts on a second one; a repeated RRQ before any ACK is answered from the same transfer,
while a different RRQ, or the same one after progress (a reboot), starts over at once.

Log keys: tftp.start, tftp.rrq, tftp.done, tftp.miss (file not found), tftp.abort (the client
ended it, e.g. EDK2's ERROR 8 after reading tsize), tftp.restart (new RRQ from a live
session's address), tftp.drop client=... reason=... (anything refused or failed),
tftp.render_error (with the resolver's traceback), tftp.bug (a bug of ours, with traceback).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import resource
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from provisioner.netboot import tftp_wire as wire
from provisioner.netboot.tftp_files import FileSource, Lookups, Resolver
from provisioner.netboot.tftp_loop import IP_PKTINFO, DropLog, EventLoop, Settings

__all__ = ["TftpServer", "Resolver", "main"]

log = logging.getLogger("provisioner.netboot.tftp")

LISTEN_RCVBUF = 4 << 20  # a boot storm of 1,000 RRQs must not overflow the default ~208 KiB


class TftpServer:
    """Serves files under `root` and names the resolver renders; refuses every write.

    `resolve(name, (ip, port))` is consulted for names that are not regular files under the
    root; it returns the bytes, or None for "File not found". If it raises, that client gets
    ERROR 0 "render error" and everyone else carries on. It runs on worker threads.

    `timeout` is the first retransmission interval (a client's RFC 2349 timeout option
    replaces it); each retry doubles it up to `max_backoff`; after `retries` unanswered
    retransmissions the transfer ends with an ERROR. `loops` event loops (threads) share the
    port; the kernel keeps each client on one of them. Two by default: on loopback or a busy
    host a send() runs the receiver's wake-up in our time slice and often costs us the CPU to
    the woken client; the GIL is released meanwhile, so a second loop keeps serving the other
    transfers (bench/tftp_storm.py, 'spawn': 10-20% less wall time with 200 clients on 2 cores).
    `processes` copies of the server (forked; see `_fork_processes`) share the port too; `active`
    counts this process's transfers only.
    """

    def __init__(self, root: Path | str | None, resolve: Resolver | None = None, host: str = "127.0.0.1",
                 port: int = 69, timeout: float = 1.0, retries: int = 5, *, max_backoff: float = 8.0,
                 max_blksize: int = wire.BLKSIZE_MAX, max_windowsize: int = 64,
                 max_sessions: int | None = None, loops: int = 2, workers: int = 4,
                 resolve_timeout: float = 10.0, max_file_size: int = 256 << 20,
                 processes: int = 1, after_fork: Callable[[], None] | None = None):
        if root is None and resolve is None:
            raise ValueError("TftpServer needs a root directory, a resolver, or both")
        if root is not None and not Path(root).is_dir():
            raise NotADirectoryError(f"TFTP root {root} is not a directory")
        self.files = FileSource(Path(root) if root is not None else None, resolve,
                                max_file_size=max_file_size)
        self.host, self._port = host, port
        self.timeout, self.retries, self.max_backoff = float(timeout), int(retries), float(max_backoff)
        self.limits = wire.Limits(max_blksize=max(wire.BLKSIZE_MIN, min(max_blksize, wire.BLKSIZE_MAX)),
                                  max_windowsize=max(1, max_windowsize))
        self.max_sessions = max_sessions
        self.resolve_timeout = resolve_timeout
        self.loop_count = max(1, loops)
        self.process_count = max(1, processes)
        self._after_fork = after_fork
        self._children: list[int] = []
        self._forked = False
        self._workers = workers
        self._family = socket.AF_INET
        self._socks: list[socket.socket] = []
        self._pktinfo = False
        self._loops: list[EventLoop] = []
        self._thread: threading.Thread | None = None
        self._serving = threading.Event()
        self._stopping = False

    @property
    def port(self) -> int:
        """The bound port (the real one when constructed with port=0)."""
        return self._port

    @property
    def active(self) -> int:
        """Transfers and lookups in progress."""
        return sum(loop.active for loop in self._loops)

    def bind(self) -> int:
        """Open the listening socket(s) now, e.g. to drop privileges after binding port 69."""
        if self._socks:
            return self._port
        _raise_fd_limit()
        info = socket.getaddrinfo(self.host, self._port, type=socket.SOCK_DGRAM)[0]
        self._family, addr = info[0], info[4]
        # Bound to the wildcard: learn each request's destination address, so that the reply
        # socket is bound to the address the client talked to.
        self._pktinfo = ipaddress.ip_address(addr[0]).is_unspecified
        try:
            for _ in range(self.loop_count * self.process_count):
                self._socks.append(self._listen(addr))
                addr = (addr[0], self._socks[0].getsockname()[1], *addr[2:])  # port 0: the one we got
        except BaseException:
            for sock in self._socks:
                sock.close()
            self._socks = []
            raise
        self._port = self._socks[0].getsockname()[1]
        if self.max_sessions is None:
            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            self.max_sessions = max(16, soft - 64)  # one socket per transfer, keep some spare
        log.info("tftp.start host=%s port=%d root=%s resolver=%s loops=%d processes=%d", self.host,
                 self._port, self.files.root, self.files.resolve is not None, self.loop_count,
                 self.process_count)
        return self._port

    def start(self) -> TftpServer:
        """Bind, then serve on background threads; returns once bound."""
        self.bind()
        self._fork_processes()  # on the caller's thread, before this server starts any thread
        self._thread = threading.Thread(target=self.serve_forever, name="tftp-loop-0", daemon=True)
        self._thread.start()
        self._serving.wait(5.0)
        return self

    def stop(self) -> None:
        """Stop serving and close every socket; returns within a few milliseconds."""
        self._stopping = True
        for loop in self._loops:
            loop.stop()
        for pid in self._children:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(2.0)
            self._thread = None

    def serve_forever(self) -> None:
        """Serve on the calling thread (plus loops-1 more) until stop(), from a thread or a signal."""
        self.bind()
        self._fork_processes()
        lookups = Lookups(self.files, self._workers)
        cfg = Settings(lookups=lookups, host=self.host, family=self._family, timeout=self.timeout,
                       retries=self.retries, max_backoff=self.max_backoff, limits=self.limits,
                       max_sessions=max(1, self.max_sessions // self.loop_count),
                       resolve_timeout=self.resolve_timeout, drops=DropLog())
        self._loops = [EventLoop(sock, self._pktinfo, cfg) for sock in self._socks]
        self._socks = []  # the loops own and close them now
        others = [threading.Thread(target=loop.run, name=f"tftp-loop-{i}", daemon=True)
                  for i, loop in enumerate(self._loops[1:], 1)]
        for t in others:
            t.start()
        if self._stopping:  # stop() came before the loops existed
            for loop in self._loops:
                loop.stop()
        self._serving.set()
        try:
            self._loops[0].run()
        finally:
            for loop in self._loops:
                loop.stop()
            for t in others:
                t.join(2.0)
            lookups.close()
            self._reap_processes()
            log.info("tftp.stop port=%d", self._port)

    # -- several processes on one port -----------------------------------------------------

    def _fork_processes(self) -> None:
        """Start processes-1 copies of this server, each with its share of the listening sockets.

        Why processes: the per-packet work is Python's, under one GIL, and a forking server like
        tftpd-hpa gets one scheduler share per transfer; one process gets one share against 200
        curl clients (or anything else the host runs). The kernel spreads requests over the
        sockets of the SO_REUSEPORT group by the client's address and port, and every transfer
        then lives on its own connected socket in the process that took the request. The
        sockets are all bound here, before privileges are dropped; the copies are forked before
        any thread of ours exists, and `after_fork` (e.g. reopening a database pool) runs in each.
        """
        if self._forked or self.process_count == 1:
            self._forked = True
            return
        self._forked = True
        per, socks = self.loop_count, self._socks
        parent = os.getpid()
        for i in range(1, self.process_count):
            pid = os.fork()
            if pid == 0:
                self._socks = socks[i * per:(i + 1) * per]
                for sock in socks[:i * per] + socks[(i + 1) * per:]:
                    sock.close()
                self._serve_copy(parent)  # never returns
            self._children.append(pid)
        self._socks = socks[:per]
        for sock in socks[per:]:
            sock.close()
        log.info("tftp.processes port=%d pids=%s", self._port, ",".join(map(str, self._children)))

    def _serve_copy(self, parent: int) -> None:
        code = 1
        try:
            self._children, self._thread = [], None
            self._serving = threading.Event()
            _end_with_parent(parent)
            signal.signal(signal.SIGTERM, lambda *_: self.stop())
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the parent stops us
            if self._after_fork is not None:
                self._after_fork()
            self.serve_forever()
            code = 0
        except BaseException:
            log.exception("tftp.bug in server process %d", os.getpid())
        finally:
            logging.shutdown()
            os._exit(code)

    def _reap_processes(self, grace: float = 2.0) -> None:
        deadline = time.monotonic() + grace
        for pid in self._children:
            try:
                os.kill(pid, signal.SIGTERM)
                while os.waitpid(pid, os.WNOHANG) == (0, 0):
                    if time.monotonic() > deadline:
                        os.kill(pid, signal.SIGKILL)
                        os.waitpid(pid, 0)
                        break
                    time.sleep(0.01)
            except (ProcessLookupError, ChildProcessError):
                pass
        self._children = []

    def __enter__(self) -> TftpServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _listen(self, addr: tuple) -> socket.socket:
        sock = socket.socket(self._family, socket.SOCK_DGRAM)
        try:
            _enlarge_rcvbuf(sock, LISTEN_RCVBUF)
            if self.loop_count * self.process_count > 1:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if self._pktinfo:
                if self._family == socket.AF_INET:
                    sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
                else:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
            sock.bind(addr)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock


def _end_with_parent(parent: int) -> None:
    """Have the kernel send SIGTERM to this copy when the parent dies (PR_SET_PDEATHSIG), so that
    a `kill -9` of the server does not leave copies serving the port."""
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # it died before prctl
        os._exit(0)


def _enlarge_rcvbuf(sock: socket.socket, size: int) -> None:
    # SO_RCVBUFFORCE (root) goes past net.core.rmem_max; otherwise the kernel caps SO_RCVBUF.
    for option in (getattr(socket, "SO_RCVBUFFORCE", None), socket.SO_RCVBUF):
        if option is None:
            continue
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, size)
            return
        except OSError:
            continue


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            log.warning("tftp.fd_limit soft=%d hard=%s could not be raised", soft, hard)


# -- command line: python -m provisioner.netboot.tftp --root DIR --bind 127.0.0.1:69 ----------

def _parse_bind(text: str) -> tuple[str, int]:
    import argparse  # here, not at the top: a server embedded in a program starts sooner without it

    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"--bind {text!r}: expected HOST:PORT, e.g. 127.0.0.1:69")
    return host.strip("[]"), int(port)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m provisioner.netboot.tftp",
                                     description="Read-only TFTP server for netboot files.")
    parser.add_argument("--root", type=Path, required=True, help="directory to serve")
    parser.add_argument("--bind", type=_parse_bind, default=("127.0.0.1", 69), help="HOST:PORT")
    parser.add_argument("--timeout", type=float, default=1.0, help="first retransmission interval, s")
    parser.add_argument("--retries", type=int, default=5)
    parser.add_argument("--max-blksize", type=int, default=wire.BLKSIZE_MAX)
    # One loop per process by default: two threads of one process contend for its GIL (5-10%
    # more CPU per packet in bench/tftp_storm.py), and the other processes keep the port served.
    parser.add_argument("--loops", type=int, default=1, help="event loops (threads) per process")
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1,
                        help="server processes sharing the port (default: one per CPU)")
    parser.add_argument("--user", help="drop privileges to this user after binding")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s")
    host, port = args.bind
    try:
        server = TftpServer(args.root, None, host, port, args.timeout, args.retries,
                            max_blksize=args.max_blksize, loops=args.loops, processes=args.processes)
        server.bind()
        if args.user:
            _drop_privileges(args.user)
    except (OSError, ValueError, KeyError) as exc:
        print(f"tftp: cannot serve {args.root} on {host}:{port}: {exc}", file=sys.stderr)
        return 1
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: server.stop())
    server.serve_forever()
    return 0


def _drop_privileges(user: str) -> None:
    import pwd

    entry = pwd.getpwnam(user)
    os.setgroups([])
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)


if __name__ == "__main__":
    sys.exit(main())
