"""The TFTP server of the netboot service: read-only, one epoll loop, many concurrent transfers.

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
itself. From tftpy we keep the packet classes (OACK encoding here; RRQ/WRQ encoding and its
TftpClient in the tests).

Modules: tftp_wire (packets, options), tftp_files (names -> bytes), tftp_transfer (the
per-transfer state machine), tftp_client (a small concurrent client for checks and load tests).

Log keys: tftp.start, tftp.rrq, tftp.done, tftp.miss (file not found), tftp.abort (the client
ended it, e.g. EDK2's ERROR 8 after reading tsize), tftp.restart (new RRQ from a live
session's address), tftp.drop client=... reason=... (anything refused or failed), tftp.bug.
"""

from __future__ import annotations

import argparse
import heapq
import ipaddress
import logging
import os
import queue
import resource
import selectors
import signal
import socket
import sys
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path
from time import monotonic

from provisioner.netboot import tftp_wire as wire
from provisioner.netboot.tftp_files import NOT_FOUND, NOT_REGULAR, FileSource, Payload, Refusal, normalise
from provisioner.netboot.tftp_transfer import DONE, GIVE_UP, SEND, Transfer

__all__ = ["TftpServer", "Resolver", "main"]

log = logging.getLogger("provisioner.netboot.tftp")

Client = tuple[str, int]
Resolver = Callable[[str, Client], "bytes | None"]

LISTEN_RCVBUF = 4 << 20  # a boot storm of 1,000 RRQs must not overflow the default ~208 KiB
IP_PKTINFO = 8  # <linux/in.h>; the socket module does not export it
_READ, _WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE


class _Pending:
    """An RRQ whose bytes are being read or rendered on a worker thread."""

    __slots__ = ("client", "name", "request", "local_ip", "deadline", "heap_at", "closed")

    def __init__(self, client: Client, name: str, request: wire.Request, local_ip: str, deadline: float):
        self.client, self.name, self.request, self.local_ip = client, name, request, local_ip
        self.deadline, self.heap_at, self.closed = deadline, float("inf"), False


class _Workers:
    """Daemon threads draining a queue: a resolver stuck forever never blocks interpreter exit."""

    def __init__(self, name: str, count: int):
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._run, name=f"{name}-{i}", daemon=True)
                         for i in range(count)]
        for t in self._threads:
            t.start()

    def submit(self, fn: Callable, *args) -> None:
        self._jobs.put((fn, args))

    def close(self) -> None:
        for _ in self._threads:
            self._jobs.put(None)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                job[0](*job[1])
            except Exception:
                log.exception("tftp.bug worker job failed")


class TftpServer:
    """Serves files under `root` and names the resolver renders; refuses every write.

    `resolve(name, (ip, port))` is consulted for names that are not regular files under the
    root; it returns the bytes, or None for "File not found". If it raises, that client gets
    ERROR 0 "render error" and everyone else carries on.

    `timeout` is the first retransmission interval (a client's RFC 2349 timeout option
    replaces it); each retry doubles it up to `max_backoff`; after `retries` unanswered
    retransmissions the transfer ends with an ERROR.
    """

    def __init__(self, root: Path | str | None, resolve: Resolver | None = None, host: str = "127.0.0.1",
                 port: int = 69, timeout: float = 1.0, retries: int = 5, *, max_backoff: float = 8.0,
                 max_blksize: int = wire.BLKSIZE_MAX, max_windowsize: int = 64,
                 max_sessions: int | None = None, workers: int = 4, resolve_timeout: float = 10.0,
                 max_file_size: int = 256 << 20):
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
        self._worker_count = workers
        self._sock: socket.socket | None = None
        self._family = socket.AF_INET
        self._pktinfo = False
        self._sel: selectors.BaseSelector | None = None
        self._wake_r = self._wake_w = -1
        self._by_client: dict[Client, Transfer | _Pending] = {}
        self._timers: list = []
        self._seq = 0
        self._ready: deque = deque()
        self._io: _Workers | None = None
        self._render: _Workers | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._drop_budget = (0.0, 0)

    # -- public API ------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound port (the real one when constructed with port=0)."""
        return self._port

    @property
    def active(self) -> int:
        """Transfers and lookups in progress."""
        return len(self._by_client)

    def bind(self) -> int:
        """Open the listening socket now (e.g. to drop privileges after binding port 69)."""
        if self._sock is not None:
            return self._port
        _raise_fd_limit()
        info = socket.getaddrinfo(self.host, self._port, type=socket.SOCK_DGRAM)[0]
        self._family, addr = info[0], info[4]
        sock = socket.socket(self._family, socket.SOCK_DGRAM)
        try:
            _enlarge_rcvbuf(sock, LISTEN_RCVBUF)
            if ipaddress.ip_address(addr[0]).is_unspecified:
                # Bound to the wildcard: learn each request's destination address so that the
                # reply socket is bound to the address the client talked to.
                if self._family == socket.AF_INET:
                    sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
                else:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
                self._pktinfo = True
            sock.bind(addr)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._port = sock.getsockname()[1]
        if self.max_sessions is None:
            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            self.max_sessions = max(16, soft - 64)  # one socket per transfer, keep some spare
        log.info("tftp.start host=%s port=%d root=%s resolver=%s", self.host, self._port,
                 self.files.root, self.files.resolve is not None)
        return self._port

    def start(self) -> TftpServer:
        """Bind, then serve on a background thread; returns once bound."""
        self.bind()
        self._thread = threading.Thread(target=self.serve_forever, name="tftp-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close every socket; returns within a few milliseconds."""
        self._stopping = True
        self._poke()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(2.0)
            self._thread = None

    def serve_forever(self) -> None:
        """Serve on the calling thread until stop() (from another thread or a signal handler)."""
        self.bind()
        assert self._sock is not None
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._sel.register(self._sock, _READ, self._on_listen)
        self._sel.register(self._wake_r, _READ, self._on_wake)
        self._io = _Workers("tftp-io", self._worker_count)
        self._render = _Workers("tftp-render", self._worker_count)
        try:
            self._loop()
        finally:
            self._shutdown()

    def __enter__(self) -> TftpServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- the loop --------------------------------------------------------------------------

    def _loop(self) -> None:
        sel, timers = self._sel, self._timers
        assert sel is not None
        while not self._stopping:
            timeout = max(0.0, timers[0][0] - monotonic()) if timers else None
            for key, mask in sel.select(timeout):
                obj = key.data
                if obj.__class__ is Transfer:
                    if obj.closed:
                        continue  # closed earlier in this batch of events
                    try:
                        self._on_session(obj, mask)
                    except Exception:
                        log.exception("tftp.bug client=%s file=%s", _fmt(obj.client), obj.name)
                        self._close(obj)
                else:
                    try:
                        obj()
                    except Exception:
                        log.exception("tftp.bug in %s", obj)
            if timers and timers[0][0] <= monotonic():
                self._fire_timers(monotonic())

    def _shutdown(self) -> None:
        for obj in list(self._by_client.values()):
            if isinstance(obj, Transfer):
                self._close(obj)
            obj.closed = True
        self._by_client.clear()
        for workers in (self._io, self._render):
            if workers is not None:
                workers.close()
        if self._sel is not None:
            self._sel.close()
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        log.info("tftp.stop port=%d", self._port)

    def _poke(self) -> None:
        if self._wake_w >= 0:
            try:
                os.write(self._wake_w, b"\0")
            except (BlockingIOError, OSError):
                pass  # the pipe is full (a wake-up is pending anyway) or already closed

    def _on_wake(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        while self._ready:
            pending, outcome = self._ready.popleft()
            try:
                self._on_looked_up(pending, outcome)
            except Exception:
                log.exception("tftp.bug client=%s file=%s", _fmt(pending.client), pending.name)

    # -- timers: a heap with at most one live entry per object (see _arm) --------------------

    def _arm(self, obj: Transfer | _Pending) -> None:
        if obj.deadline < obj.heap_at:
            obj.heap_at = obj.deadline
            self._seq += 1
            heapq.heappush(self._timers, (obj.deadline, self._seq, obj))

    def _fire_timers(self, now: float) -> None:
        timers = self._timers
        while timers and timers[0][0] <= now:
            when, _, obj = heapq.heappop(timers)
            if obj.closed or when != obj.heap_at:
                continue  # superseded by an earlier entry, or the transfer is over
            obj.heap_at = float("inf")
            if obj.deadline > now:  # the deadline moved on since this entry was pushed
                self._arm(obj)
                continue
            try:
                if isinstance(obj, Transfer):
                    self._on_transfer_timer(obj, now)
                else:
                    self._on_lookup_timeout(obj)
            except Exception:
                log.exception("tftp.bug timer client=%s", _fmt(obj.client))
                if isinstance(obj, Transfer):
                    self._close(obj)

    def _on_transfer_timer(self, tr: Transfer, now: float) -> None:
        if tr.on_timer(now) == GIVE_UP:
            self._drop(tr.client, f"timeout after {tr.retries} retransmissions", tr.name)
            self._send_error(tr, wire.ERR_UNDEFINED, "Transfer timed out")
            self._close(tr)
        else:
            self._pump(tr)

    def _on_lookup_timeout(self, pending: _Pending) -> None:
        pending.closed = True
        if self._by_client.get(pending.client) is pending:
            del self._by_client[pending.client]
        self._drop(pending.client, f"lookup took over {self.resolve_timeout:g}s", pending.name)
        self._reply_error(pending.client, wire.ERR_UNDEFINED, "render error")

    # -- requests on the listening socket --------------------------------------------------

    def _on_listen(self) -> None:
        sock = self._sock
        assert sock is not None
        local_ip = self.host
        for _ in range(256):  # then let the transfers have a turn
            try:
                if self._pktinfo:
                    datagram, anc, _flags, client = sock.recvmsg(65536, 256)
                    local_ip = _pktinfo_address(anc) or self.host
                else:
                    datagram, client = sock.recvfrom(65536)
            except BlockingIOError:
                return
            except OSError as exc:  # e.g. ECONNREFUSED left over from an ERROR we sent
                log.debug("tftp.listen_error %s", exc)
                continue
            client = client[:2]
            try:
                self._on_request(datagram, client, local_ip)
            except Exception:
                log.exception("tftp.bug request from %s", _fmt(client))

    def _on_request(self, datagram: bytes, client: Client, local_ip: str) -> None:
        req = wire.parse_request(datagram)
        if isinstance(req, wire.BadPacket):
            self._drop(client, req.reason)
            if req.reply:
                self._reply_error(client, wire.ERR_ILLEGAL, "Illegal TFTP operation")
            return
        if req.opcode == wire.OP_WRQ:
            self._drop(client, "write request", _clip(req.filename))
            self._reply_error(client, wire.ERR_ACCESS, "Access violation: read-only server")
            return
        if req.mode not in wire.MODES:
            self._drop(client, f"mode {_clip(req.mode)!r}", _clip(req.filename))
            self._reply_error(client, wire.ERR_ILLEGAL, "Unsupported mode")
            return
        name = normalise(req.filename)
        if isinstance(name, Refusal):
            self._refuse(client, _clip(req.filename), name)
            return
        old = self._by_client.get(client)
        if old is not None:
            if old.request == req and not (isinstance(old, Transfer) and old.progressed):
                # The same request again before the client acknowledged anything: our first
                # reply was lost or is late. Answer from the same transfer ID, so that a client
                # that did get the first reply is not left talking to a closed socket.
                if isinstance(old, Transfer) and old.on_duplicate(monotonic()) == SEND:
                    self._pump(old)
                return
            # A different request, or one after progress: iPXE reuses its source ports across
            # reboots, so the old transfer is dead. Start over at once.
            log.info("tftp.restart client=%s old_file=%s file=%s", _fmt(client), old.name, name)
            del self._by_client[client]
            old.closed = True
            if isinstance(old, Transfer):
                self._close(old)
        assert self.max_sessions is not None
        if len(self._by_client) >= self.max_sessions:
            self._drop(client, "too many sessions", name)
            self._reply_error(client, wire.ERR_UNDEFINED, "Server busy")
            return
        log.info("tftp.rrq client=%s file=%s mode=%s options=%s", _fmt(client), _clip(name), req.mode,
                 _clip(",".join(f"{k}={v.decode('ascii', 'replace')}" for k, v in req.options) or "-"))
        pending = _Pending(client, name, req, local_ip, monotonic() + self.resolve_timeout)
        self._by_client[client] = pending
        self._arm(pending)
        assert self._io is not None
        self._io.submit(self._look_up_file, pending)

    # -- worker threads --------------------------------------------------------------------

    def _look_up_file(self, pending: _Pending) -> None:
        outcome = self.files.from_root(pending.name)
        if outcome in (None, NOT_FOUND, NOT_REGULAR) and self.files.resolve is not None:
            assert self._render is not None
            self._render.submit(self._render_file, pending, outcome)
            return
        self._deliver(pending, outcome or NOT_FOUND)

    def _render_file(self, pending: _Pending, from_root: Refusal | None) -> None:
        outcome = self.files.render(pending.name, pending.client)
        self._deliver(pending, outcome if outcome is not None else (from_root or NOT_FOUND))

    def _deliver(self, pending: _Pending, outcome: Payload | Refusal) -> None:
        if isinstance(outcome, Payload) and pending.request.mode == "netascii":
            outcome = Payload(wire.to_netascii(outcome.data), outcome.source)
        self._ready.append((pending, outcome))
        self._poke()

    # -- starting a transfer ---------------------------------------------------------------

    def _on_looked_up(self, pending: _Pending, outcome: Payload | Refusal) -> None:
        if pending.closed or self._by_client.get(pending.client) is not pending:
            return  # superseded by a newer request from the same address, or timed out
        pending.closed = True
        del self._by_client[pending.client]
        client = pending.client
        if isinstance(outcome, Refusal):
            self._refuse(client, pending.name, outcome)
            return
        neg = wire.negotiate(pending.request.options, len(outcome.data), self.limits)
        try:
            sock = socket.socket(self._family, socket.SOCK_DGRAM)
        except OSError as exc:  # EMFILE/ENFILE: out of descriptors
            self._drop(client, f"cannot open a socket: {exc.strerror}", pending.name)
            self._reply_error(client, wire.ERR_UNDEFINED, "Server busy")
            return
        try:
            sock.setblocking(False)
            sock.bind((pending.local_ip, 0))
            sock.connect(client)  # the kernel then filters out packets from other addresses
        except OSError as exc:
            sock.close()
            self._drop(client, f"cannot open a reply socket: {exc.strerror}", pending.name)
            return
        tr = Transfer(client, pending.name, outcome.data, blksize=neg.blksize,
                      windowsize=neg.windowsize,
                      oack=wire.encode_oack(neg.acked) if neg.acked else None,
                      rto=neg.timeout or self.timeout, max_rto=self.max_backoff, retries=self.retries)
        tr.sock, tr.request = sock, pending.request
        self._by_client[client] = tr
        assert self._sel is not None
        self._sel.register(sock, _READ, tr)
        tr.begin(monotonic())
        self._pump(tr)

    # -- a transfer's socket ---------------------------------------------------------------

    def _on_session(self, tr: Transfer, mask: int) -> None:
        if mask & _WRITE:
            self._pump(tr)
            if not mask & _READ:
                return
        try:
            packet = tr.sock.recv(65536)
        except BlockingIOError:
            return
        except ConnectionRefusedError:  # ICMP port unreachable: the client is gone
            log.info("tftp.abort client=%s file=%s reason=client gone", _fmt(tr.client), tr.name)
            self._close(tr)
            return
        if len(packet) < 4:
            return
        opcode, block = wire.unpack_hh(packet)
        if opcode == wire.OP_ACK:
            verdict = tr.on_ack(block, monotonic())
            if verdict == SEND:
                self._pump(tr)
            elif verdict == DONE:
                log.info("tftp.done client=%s file=%s bytes=%d seconds=%.3f blksize=%d windowsize=%d "
                         "retransmits=%d", _fmt(tr.client), tr.name, len(tr.data),
                         monotonic() - tr.started, tr.blksize, tr.windowsize, tr.retransmits)
                self._close(tr)
        elif opcode == wire.OP_ERROR:
            # EDK2 sends ERROR 8 right after the OACK once it has read tsize: not a failure.
            message = packet[4:].split(b"\0", 1)[0].decode("ascii", "replace")
            log.info("tftp.abort client=%s file=%s reason=client error code=%d message=%r",
                     _fmt(tr.client), tr.name, block, message)
            self._close(tr)
        # Anything else from the client's address is ignored; the timer covers real loss.

    def _pump(self, tr: Transfer) -> None:
        """Send blocks next_send..window_hi; stop early if the socket buffer is full."""
        send, data, size = tr.sock.send, tr.data, tr.blksize
        block, last = tr.next_send, tr.window_hi
        try:
            while block <= last:
                if block == 0:
                    send(tr.oack)
                else:
                    offset = (block - 1) * size
                    send(wire.data_header(block) + data[offset:offset + size])
                block += 1
        except BlockingIOError:
            tr.next_send = block
            if not tr.want_write:
                tr.want_write = True
                self._sel.modify(tr.sock, _READ | _WRITE, tr)
            self._arm(tr)
            return
        except ConnectionRefusedError:
            log.info("tftp.abort client=%s file=%s reason=client gone", _fmt(tr.client), tr.name)
            self._close(tr)
            return
        except OSError as exc:
            # EPERM (a firewall's output drop), ENOBUFS: treat the window as lost; the timer
            # retransmits and eventually gives up. Logged once per transfer.
            if not tr.send_failed:
                tr.send_failed = True
                self._drop(tr.client, f"send failed: {exc.strerror or exc}", tr.name)
            block = last + 1
        tr.next_send = block
        if tr.want_write:
            tr.want_write = False
            self._sel.modify(tr.sock, _READ, tr)
        if tr.deadline < tr.heap_at:
            self._arm(tr)

    def _close(self, tr: Transfer) -> None:
        tr.closed = True
        if self._by_client.get(tr.client) is tr:
            del self._by_client[tr.client]
        if tr.sock is not None:
            try:
                self._sel.unregister(tr.sock)
            except (KeyError, ValueError):
                pass
            tr.sock.close()
            tr.sock = None

    # -- errors and logging ----------------------------------------------------------------

    def _refuse(self, client: Client, name: str, refusal: Refusal) -> None:
        if refusal.code == wire.ERR_NOT_FOUND and refusal.reason == "not found":
            log.info("tftp.miss client=%s file=%s", _fmt(client), _clip(name))  # pxelinux probes many names
        else:
            self._drop(client, refusal.reason, name)
        self._reply_error(client, refusal.code, refusal.message)

    def _reply_error(self, client: Client, code: int, message: str) -> None:
        try:
            self._sock.sendto(wire.encode_error(code, message), client)
        except OSError as exc:
            self._drop(client, f"error reply not sent: {exc.strerror or exc}")

    def _send_error(self, tr: Transfer, code: int, message: str) -> None:
        try:
            tr.sock.send(wire.encode_error(code, message))
        except OSError:
            pass

    def _drop(self, client: Client, reason: str, name: str | None = None) -> None:
        # At most 50 lines a second, so that a flood of junk cannot flood the log.
        now = monotonic()
        window, count = self._drop_budget
        if now - window >= 1.0:
            if count > 50:
                log.warning("tftp.drop_suppressed count=%d", count - 50)
            window, count = now, 0
        self._drop_budget = (window, count + 1)
        if count < 50:
            log.warning("tftp.drop client=%s reason=%s file=%s", _fmt(client), reason,
                        _clip(name) if name is not None else "-")


def _fmt(client: Client) -> str:
    return f"{client[0]}:{client[1]}"


def _clip(name: str | bytes) -> str:
    """A filename fit for one log line: decoded, and at most 200 characters."""
    if isinstance(name, bytes):
        name = name.decode("utf-8", "backslashreplace")
    return name if len(name) <= 200 else name[:200] + f"...({len(name)} chars)"


def _pktinfo_address(ancillary: list) -> str | None:
    for level, kind, data in ancillary:
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= 12:
            return socket.inet_ntop(socket.AF_INET, data[8:12])  # struct in_pktinfo.ipi_addr
        if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO and len(data) >= 16:
            return socket.inet_ntop(socket.AF_INET6, data[:16])  # struct in6_pktinfo.ipi6_addr
    return None


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
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"--bind {text!r}: expected HOST:PORT, e.g. 127.0.0.1:69")
    return host.strip("[]"), int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m provisioner.netboot.tftp",
                                     description="Read-only TFTP server for netboot files.")
    parser.add_argument("--root", type=Path, required=True, help="directory to serve")
    parser.add_argument("--bind", type=_parse_bind, default=("127.0.0.1", 69), help="HOST:PORT")
    parser.add_argument("--timeout", type=float, default=1.0, help="first retransmission interval, s")
    parser.add_argument("--retries", type=int, default=5)
    parser.add_argument("--max-blksize", type=int, default=wire.BLKSIZE_MAX)
    parser.add_argument("--user", help="drop privileges to this user after binding")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s")
    host, port = args.bind
    try:
        server = TftpServer(args.root, None, host, port, args.timeout, args.retries,
                            max_blksize=args.max_blksize)
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
