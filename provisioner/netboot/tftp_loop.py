"""One event loop of the TFTP server: a listening socket, the transfers it started, their timers.

Single-threaded and non-blocking: epoll wakes it for the listening socket, one UDP socket per
transfer (a dict from the descriptor leads straight to the transfer: O(1) per packet) and a
wake-up pipe for lookups finished on the worker threads. epoll directly, not `selectors`: its
key objects and per-event bookkeeping were a tenth of our CPU per packet in a boot storm. Timers live in a heap. Every handler
is wrapped, so a bug or a bad datagram costs only its own transfer. The server runs one loop
per thread on the same port (SO_REUSEPORT), and the kernel keeps each client on one loop.
"""

from __future__ import annotations

import heapq
import logging
import os
import select
import socket
import struct
from collections import deque
from dataclasses import dataclass
from time import monotonic

from provisioner.netboot import tftp_wire as wire
from provisioner.netboot.tftp_files import Lookups, Payload, Refusal, normalise
from provisioner.netboot.tftp_transfer import DONE, GIVE_UP, SEND, Transfer
from provisioner.observability import metrics

log = logging.getLogger("provisioner.netboot.tftp")

Client = tuple[str, int]
IP_PKTINFO = 8  # <linux/in.h>; the socket module does not export it
_READ, _WRITE = select.EPOLLIN, select.EPOLLOUT
_READABLE = select.EPOLLIN | select.EPOLLERR | select.EPOLLHUP  # errors surface through recv()
_MAX_EVENTS = 512
_unpack_hh, _pack_hh = wire.unpack_hh, struct.Struct("!HH").pack  # bound once: used per packet


class DropLog:
    """`tftp.drop` warnings, at most `per_second` lines a second: junk must not flood the log."""

    def __init__(self, per_second: int = 50):
        self.per_second = per_second
        self._window, self._count = 0.0, 0

    def log(self, client: Client, reason: str, name: str | None = None) -> None:
        now = monotonic()
        if now - self._window >= 1.0:
            if self._count > self.per_second:
                log.warning("tftp.drop_suppressed count=%d", self._count - self.per_second)
            self._window, self._count = now, 0
        self._count += 1
        if self._count <= self.per_second:
            log.warning("tftp.drop client=%s reason=%s file=%s", _fmt(client), reason,
                        _clip(name) if name is not None else "-")


@dataclass(frozen=True)
class Settings:
    """What every loop of one server shares."""

    lookups: Lookups
    host: str
    family: int
    timeout: float
    retries: int
    max_backoff: float
    limits: wire.Limits
    max_sessions: int  # per loop
    resolve_timeout: float
    drops: DropLog


class _Pending:
    """An RRQ whose bytes are being read or rendered on a worker thread."""

    __slots__ = ("client", "name", "request", "local_ip", "deadline", "heap_at", "closed")

    def __init__(self, client: Client, name: str, request: wire.Request, local_ip: str, deadline: float):
        self.client, self.name, self.request, self.local_ip = client, name, request, local_ip
        self.deadline, self.heap_at, self.closed = deadline, float("inf"), False


class EventLoop:
    """Serves the requests that arrive on `sock`, a bound non-blocking UDP socket."""

    def __init__(self, sock: socket.socket, pktinfo: bool, cfg: Settings):
        self._sock, self._pktinfo, self.cfg = sock, pktinfo, cfg
        self._epoll = select.epoll()
        self._watched: dict[int, object] = {}  # descriptor -> its transfer or handler
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._watch(sock.fileno(), _READ, self._on_listen)
        self._watch(self._wake_r, _READ, self._on_wake)
        self._by_client: dict[Client, Transfer | _Pending] = {}
        self._timers: list = []
        self._seq = 0
        self._ready: deque = deque()
        self._stopping = False
        self.served = 0  # requests taken in, for tests and stats

    # -- the loop --------------------------------------------------------------------------

    def run(self) -> None:
        """Serve until stop(); then close every socket of this loop."""
        try:
            self._run()
        finally:
            self._shutdown()

    def stop(self) -> None:
        self._stopping = True
        self._poke()

    @property
    def active(self) -> int:
        return len(self._by_client)

    def _watch(self, fd: int, mask: int, obj: object) -> None:
        self._epoll.register(fd, mask)
        self._watched[fd] = obj

    def _run(self) -> None:
        poll, watched, timers = self._epoll.poll, self._watched, self._timers
        while not self._stopping:
            timeout = max(0.0, timers[0][0] - monotonic()) if timers else -1
            try:
                events = poll(timeout, _MAX_EVENTS)
            except InterruptedError:
                continue
            # Look every descriptor up before handling any: a transfer closed in this batch may
            # hand its descriptor number to a new one, which must not get the old one's events.
            for obj, mask in [(watched.get(fd), mask) for fd, mask in events]:
                if obj.__class__ is Transfer:
                    if obj.closed:
                        continue  # closed earlier in this batch of events
                    try:
                        self._on_session(obj, mask)
                    except Exception:
                        log.exception("tftp.bug client=%s file=%s", _fmt(obj.client), obj.name)
                        self._close(obj)
                elif obj is not None:  # None: closed earlier in this batch
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
        self._watched.clear()
        self._epoll.close()
        wake_r, wake_w, self._wake_w = self._wake_r, self._wake_w, -1
        os.close(wake_r)
        os.close(wake_w)
        self._sock.close()

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
        self._drop(pending.client, f"lookup took over {self.cfg.resolve_timeout:g}s", pending.name)
        self._reply_error(pending.client, wire.ERR_UNDEFINED, "render error")

    # -- requests on the listening socket --------------------------------------------------

    def _on_listen(self) -> None:
        sock = self._sock
        local_ip = self.cfg.host
        for _ in range(256):  # then let the transfers have a turn
            try:
                if self._pktinfo:
                    datagram, anc, _flags, client = sock.recvmsg(65536, 256)
                    local_ip = _pktinfo_address(anc) or self.cfg.host
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
        if len(self._by_client) >= self.cfg.max_sessions:
            self._drop(client, "too many sessions", name)
            self._reply_error(client, wire.ERR_UNDEFINED, "Server busy")
            return
        log.info("tftp.rrq client=%s file=%s mode=%s options=%s", _fmt(client), _clip(name), req.mode,
                 _clip(",".join(f"{k}={v.decode('ascii', 'replace')}" for k, v in req.options) or "-"))
        self.served += 1
        pending = _Pending(client, name, req, local_ip, monotonic() + self.cfg.resolve_timeout)
        self._by_client[client] = pending
        self._arm(pending)
        self.cfg.lookups.submit(name, client, req.mode == "netascii",
                                lambda outcome: self._deliver(pending, outcome))

    def _deliver(self, pending: _Pending, outcome: Payload | Refusal) -> None:
        """Called on a worker thread: hand the outcome to the loop."""
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
        neg = wire.negotiate(pending.request.options, len(outcome.data), self.cfg.limits)
        try:
            sock = socket.socket(self.cfg.family, socket.SOCK_DGRAM)
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
                      rto=neg.timeout or self.cfg.timeout, max_rto=self.cfg.max_backoff,
                      retries=self.cfg.retries)
        tr.sock, tr.request = sock, pending.request
        self._by_client[client] = tr
        self._watch(sock.fileno(), _READ, tr)
        tr.begin(monotonic())
        self._pump(tr)

    # -- a transfer's socket ---------------------------------------------------------------

    def _on_session(self, tr: Transfer, mask: int) -> None:
        if mask & _WRITE:
            self._pump(tr)
            if tr.closed or not mask & _READABLE:
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
        opcode, block = _unpack_hh(packet)
        if opcode == wire.OP_ACK:
            verdict = tr.on_ack(block, monotonic())
            if verdict == SEND:
                self._pump(tr)
            elif verdict == DONE:
                log.info("tftp.done client=%s file=%s bytes=%d seconds=%.3f blksize=%d windowsize=%d "
                         "retransmits=%d", _fmt(tr.client), tr.name, len(tr.data),
                         monotonic() - tr.started, tr.blksize, tr.windowsize, tr.retransmits)
                metrics.tftp_transfer("done")
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
                    send(_pack_hh(wire.OP_DATA, block & 0xFFFF) + data[offset:offset + size])  # wire.data_header
                block += 1
        except BlockingIOError:
            tr.next_send = block
            if not tr.want_write:
                tr.want_write = True
                self._epoll.modify(tr.sock.fileno(), _READ | _WRITE)
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
            self._epoll.modify(tr.sock.fileno(), _READ)
        if tr.deadline < tr.heap_at:
            self._arm(tr)

    def _close(self, tr: Transfer) -> None:
        tr.closed = True
        if self._by_client.get(tr.client) is tr:
            del self._by_client[tr.client]
        if tr.sock is not None:
            fd = tr.sock.fileno()
            if self._watched.get(fd) is tr:
                del self._watched[fd]
                try:
                    self._epoll.unregister(fd)
                except OSError:
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
        metrics.tftp_error(reason)
        self.cfg.drops.log(client, reason, name)


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


