"""HTTPS on many loopback addresses at once, served by one WSGI app under one cheroot server.

A simulated rack has a BMC per address (127.N.12.1, .2, ...), all on one port, like the IPMI lab.
cheroot listens on one socket; here one acceptor thread watches every BMC's listening socket with
epoll, completes the TLS handshake on a small pool, and hands each connection to cheroot's worker
threads (HTTPServer.process_conn), which serve it and keep it alive as for their own socket. The
WSGI environ says which address the client connected to (`provisioner.bmc_address`).

A BMC whose `admit(address)` is False (unreachable, or dark after losing power) answers nothing:
its connections are accepted by the kernel and then held without a byte, as a dead BMC's TCP stack
would before timing out; `drop(address)` closes the ones already open.
"""

from __future__ import annotations

import io
import logging
import select
import socket
import ssl
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from cheroot import wsgi

log = logging.getLogger("provisioner.lab.redfish")

HANDSHAKE_TIMEOUT_S = 10.0
HELD_S = 60.0  # how long an unanswered connection is held before it is closed


class _CountingSocketIO(socket.SocketIO):
    """The socket under a reader, counting what came off it (for `_Reader.has_data`)."""

    received = 0

    def readinto(self, b):
        n = super().readinto(b)
        if n:
            self.received += n
        return n


class _Reader(io.BufferedReader):
    """What cheroot reads a connection through, in C: its own reader subclasses the pure-Python
    `_pyio` one, whose readline was a third of the simulator's CPU per request (yappi,
    bench/redfish_fleet.py). cheroot asks `has_data()` (a pipelined request already buffered?),
    which C's reader cannot say, so the bytes handed out are counted against the bytes received."""

    def __init__(self, sock, mode="rb", bufsize=8192):
        self._sock_io = _CountingSocketIO(sock, "rb")
        super().__init__(self._sock_io, bufsize)
        self.bytes_read = 0

    def read(self, size=-1):
        data = super().read(size)
        self.bytes_read += len(data)
        return data

    def readline(self, size=-1):
        data = super().readline(size)
        self.bytes_read += len(data)
        return data

    def readinto(self, b):
        n = super().readinto(b)
        self.bytes_read += n or 0
        return n

    def __next__(self):
        line = self.readline()
        if not line:
            raise StopIteration
        return line

    def has_data(self) -> bool:
        return self._sock_io.received > self.bytes_read


class _Writer:
    """cheroot's writer sends every write at once (its responses are written whole); so does this,
    without the pure-Python buffer in between."""

    def __init__(self, sock, mode="wb", bufsize=0):
        self._sock = sock
        self.bytes_written = 0
        self.closed = False

    def write(self, data) -> int:
        self._sock.sendall(data)
        self.bytes_written += len(data)
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def _makefile(sock, mode="r", bufsize=8192):
    return _Reader(sock, mode, bufsize) if "r" in mode else _Writer(sock, mode, bufsize)


class MultiAddressServer:
    """serve `app` over TLS on (address, port) for each address; start() returns once all listen."""

    def __init__(self, app, addresses: list[str], port: int, *, certfile: str, keyfile: str,
                 admit: Callable[[str], bool] = lambda a: True, threads: int = 16,
                 handshake_workers: int = 4, keepalive_s: float = 30.0):
        self.app, self.addresses, self.port = app, list(addresses), port
        self.admit = admit
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.context.load_cert_chain(certfile, keyfile)
        # cheroot's own socket serves nothing here (bound to a free port, never announced); its
        # workers and keep-alive selector serve the connections the acceptor hands over.
        self.server = wsgi.Server(("127.0.0.1", 0), self._environ, numthreads=threads,
                                  timeout=keepalive_s, server_name="redfish-sim")
        self._handshakes = ThreadPoolExecutor(handshake_workers, thread_name_prefix="redfish-tls")
        self._listeners: dict[int, tuple[socket.socket, str]] = {}
        self._open: dict[str, weakref.WeakSet] = {}   # address -> open TLS sockets (for drop)
        self._held: list[tuple[float, socket.socket]] = []
        self.handshakes: dict[str, int] = {}  # address -> TLS connections completed (pooling shows here)
        self.requests: dict[tuple[str, str, str], int] = {}  # (address, method, path) -> requests served
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> MultiAddressServer:
        self._epoll = select.epoll()
        self._wake_r, self._wake_w = socket.socketpair()
        self._epoll.register(self._wake_r.fileno(), select.EPOLLIN)
        try:
            for address in self.addresses:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind((address, self.port))
                except OSError as e:
                    s.close()
                    raise OSError(e.errno, f"Redfish BMC {address}:{self.port}: cannot bind: {e.strerror}") from None
                s.listen(128)
                s.setblocking(False)
                self._listeners[s.fileno()] = (s, address)
                self._epoll.register(s.fileno(), select.EPOLLIN)
            self.server.prepare()
        except BaseException:
            self._close_listeners()
            raise
        self._threads = [threading.Thread(target=self.server.serve, name="redfish-cheroot", daemon=True),
                         threading.Thread(target=self._accept_loop, name="redfish-accept", daemon=True)]
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        if self._stopping.is_set():
            return
        self._stopping.set()
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass
        self.server.stop()
        for t in self._threads:
            t.join(timeout=5)
        self._handshakes.shutdown(wait=False, cancel_futures=True)
        self._close_listeners()
        with self._lock:
            for _, s in self._held:
                s.close()
            self._held.clear()

    def drop(self, address: str) -> None:
        """Close every open connection to `address` (the BMC went dark)."""
        with self._lock:
            socks = list(self._open.pop(address, ()))
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    # -- internals ----------------------------------------------------------------------------------

    def _environ(self, environ, start_response):
        key = (environ["provisioner.bmc_address"], environ["REQUEST_METHOD"], environ.get("PATH_INFO", ""))
        with self._lock:
            self.requests[key] = self.requests.get(key, 0) + 1
        return self.app(environ, start_response)

    def _accept_loop(self) -> None:
        wake = self._wake_r.fileno()
        while not self._stopping.is_set():
            try:
                events = self._epoll.poll(1.0)
            except InterruptedError:
                continue
            for fd, _ in events:
                if fd == wake:
                    continue
                listener, address = self._listeners.get(fd, (None, None))
                if listener is None:
                    continue
                for _ in range(64):
                    try:
                        s, peer = listener.accept()
                    except (BlockingIOError, OSError):
                        break
                    if not self.admit(address):
                        with self._lock:
                            self._held.append((time.monotonic() + HELD_S, s))
                        continue
                    self._handshakes.submit(self._handshake, s, peer, address)
            self._expire_held()

    def _expire_held(self) -> None:
        now = time.monotonic()
        with self._lock:
            keep = [(t, s) for t, s in self._held if t > now]
            gone = [s for t, s in self._held if t <= now]
            self._held = keep
        for s in gone:
            s.close()

    def _handshake(self, s: socket.socket, peer, address: str) -> None:
        try:
            # headers and body go out in separate writes: without this, Nagle holds the body back
            # until the client's delayed ACK (40 ms per response)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.setblocking(True)
            s.settimeout(HANDSHAKE_TIMEOUT_S)
            tls = self.context.wrap_socket(s, server_side=True)
            tls.settimeout(self.server.timeout)
        except (OSError, ssl.SSLError) as e:
            log.debug("redfish.tls_failed bmc=%s peer=%s error=%s", address, peer, e)
            s.close()
            return
        conn = self.server.ConnectionClass(self.server, tls, _makefile)
        conn.remote_addr, conn.remote_port = peer[0], peer[1]
        # cheroot copies ssl_env into every request's environ
        conn.ssl_env = {"wsgi.url_scheme": "https", "HTTPS": "on", "provisioner.bmc_address": address}
        with self._lock:
            self._open.setdefault(address, weakref.WeakSet()).add(tls)
            self.handshakes[address] = self.handshakes.get(address, 0) + 1
        self.server.process_conn(conn)

    def _close_listeners(self) -> None:
        for s, _ in self._listeners.values():
            s.close()
        self._listeners.clear()
        for s in (getattr(self, "_wake_r", None), getattr(self, "_wake_w", None)):
            if s is not None:
                s.close()
        if getattr(self, "_epoll", None) is not None:
            self._epoll.close()
