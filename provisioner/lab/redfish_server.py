"""HTTPS on many loopback addresses at once, served by one WSGI app.

A simulated rack has a BMC per address (127.N.12.1, .2, ...), all on one port, like the IPMI lab.
One acceptor thread watches every BMC's listening socket with epoll; each accepted connection gets
a thread (from a pool that grows on demand) that completes the TLS handshake and serves it (provisioner.lab.redfish_conn), keeping it
alive until the client closes it or stays idle `keepalive_s`. The WSGI environ says which address
the client connected to (`provisioner.bmc_address`).

A BMC whose `admit(address)` is False (unreachable, or dark after losing power) answers nothing:
its connections are accepted by the kernel and then held without a byte, as a dead BMC's TCP stack
would before timing out; `drop(address)` closes the ones already open.
"""

from __future__ import annotations

import logging
import select
import socket
import ssl
import threading
import time
import weakref
from collections.abc import Callable

from provisioner.drivers.bounded import DaemonPool
from provisioner.lab.redfish_conn import serve_connection

log = logging.getLogger("provisioner.lab.redfish")

HANDSHAKE_TIMEOUT_S = 10.0
HELD_S = 60.0  # how long an unanswered connection is held before it is closed


class MultiAddressServer:
    """serve `app` over TLS on (address, port) for each address; start() returns once all listen."""

    def __init__(self, app, addresses: list[str], port: int, *, certfile: str, keyfile: str,
                 admit: Callable[[str], bool] = lambda a: True, keepalive_s: float = 30.0,
                 max_body: int = 64 << 20):
        self.app, self.addresses, self.port = app, list(addresses), port
        self.admit, self.keepalive_s, self.max_body = admit, keepalive_s, max_body
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.context.load_cert_chain(certfile, keyfile)
        # a thread per open connection, reused for the next one (starting a thread per connection
        # cost a tenth of the simulator's CPU: Thread.start waits for the new thread to run)
        self._pool = DaemonPool(max_workers=1 << 16, name="redfish-conn", idle_s=HELD_S)
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
        except BaseException:
            self._close_listeners()
            raise
        self._threads = [threading.Thread(target=self._accept_loop, name="redfish-accept", daemon=True)]
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
        for t in self._threads:
            t.join(timeout=5)
        self._close_listeners()
        for address in list(self._open):
            self.drop(address)
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
                    self._pool.submit(self._serve, s, peer, address)
            self._expire_held()

    def _expire_held(self) -> None:
        now = time.monotonic()
        with self._lock:
            keep = [(t, s) for t, s in self._held if t > now]
            gone = [s for t, s in self._held if t <= now]
            self._held = keep
        for s in gone:
            s.close()

    def _serve(self, s: socket.socket, peer, address: str) -> None:
        try:
            # a response goes out in one write, but without this a late segment waits for the
            # client's delayed ACK (40 ms)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.settimeout(HANDSHAKE_TIMEOUT_S)
            tls = self.context.wrap_socket(s, server_side=True)
        except (OSError, ssl.SSLError) as e:
            log.debug("redfish.tls_failed bmc=%s peer=%s error=%s", address, peer, e)
            s.close()
            return
        with self._lock:
            self._open.setdefault(address, weakref.WeakSet()).add(tls)
            self.handshakes[address] = self.handshakes.get(address, 0) + 1
        serve_connection(self._counted, tls, peer, address, self.port, self.keepalive_s, self.max_body)

    def _counted(self, environ, start_response):
        key = (environ["provisioner.bmc_address"], environ["REQUEST_METHOD"], environ.get("PATH_INFO", ""))
        with self._lock:
            self.requests[key] = self.requests.get(key, 0) + 1
        return self.app(environ, start_response)

    def _close_listeners(self) -> None:
        for s, _ in self._listeners.values():
            s.close()
        self._listeners.clear()
        for s in (getattr(self, "_wake_r", None), getattr(self, "_wake_w", None)):
            if s is not None:
                s.close()
        if getattr(self, "_epoll", None) is not None:
            self._epoll.close()
