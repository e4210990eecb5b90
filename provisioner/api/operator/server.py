"""The operator API under cheroot (as the boot routes' in-process server), with TLS when given a
certificate and key (cheroot's builtin ssl adapter: TLS 1.2 and up)."""

from __future__ import annotations

import logging
import socket
import ssl
import threading

from cheroot import wsgi
from cheroot.ssl.builtin import BuiltinSSLAdapter

log = logging.getLogger("provisioner.api.operator")


class OperatorServer:
    def __init__(self, app, host: str, port: int, *, tls_cert: str | None = None, tls_key: str | None = None,
                 threads: int = 32, reuse_port: bool = False):
        self.app, self.host, self.port, self.threads = app, host, port, threads
        self.reuse_port = reuse_port  # several processes serve one port (`provisioner api --processes N`)
        self.tls_cert, self.tls_key = tls_cert, tls_key

    @property
    def scheme(self) -> str:
        return "https" if self.tls_cert else "http"

    def start(self) -> OperatorServer:
        placeholder = self._reserve_port() if self.reuse_port and self.port == 0 else None
        server = wsgi.Server((self.host, self.port), self.app, numthreads=self.threads,
                             server_name="provisioner-api", request_queue_size=1024, timeout=30, shutdown_timeout=2)
        # cheroot keeps 10 idle keep-alive connections by default and closes every other one after
        # its answer: automation that polls would reconnect (and renegotiate TLS) on every request.
        # Idle connections cost no thread (they wait in the selector) and end after `timeout`.
        server.keep_alive_conn_limit = None
        server.reuse_port = self.reuse_port
        if self.tls_cert:
            adapter = BuiltinSSLAdapter(self.tls_cert, self.tls_key)
            adapter.context.minimum_version = ssl.TLSVersion.TLSv1_2
            server.ssl_adapter = adapter
        try:
            server.prepare()  # binds now: a busy port is an error here, not in the thread
        finally:
            if placeholder is not None:
                placeholder.close()
        self._server = server
        self.port = server.bind_addr[1]
        self._thread = threading.Thread(target=server.serve, name="operator-api", daemon=True)
        self._thread.start()
        log.info("api.start bind=%s:%s scheme=%s", self.host, self.port, self.scheme)
        return self

    def _reserve_port(self) -> socket.socket:
        """A free port for several processes (`--bind HOST:0 --processes N`): cheroot will not
        share an ephemeral port, so one is bound here first, with SO_REUSEPORT, and held until
        the server has bound it too."""
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((self.host, 0))
        self.port = sock.getsockname()[1]
        return sock

    def stop(self) -> None:
        self._server.stop()
        self._thread.join(timeout=5)
