"""Running a site's boot services: the TFTP server and the HTTP server (cheroot), each optional."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from cheroot import server as cheroot_server
from cheroot import wsgi

from provisioner.api.app import create_app
from provisioner.netboot.limits import Limits
from provisioner.netboot.service import BootService
from provisioner.serve.binds import parse_bind

log = logging.getLogger("provisioner.serve")


class _BoundedRequest(cheroot_server.HTTPRequest):
    """Cheroot's request with gunicorn's header limits: too many or too large header fields are
    431 (RFC 6585 §5), where cheroot alone accepts any number and answers a large total with 413."""

    max_fields = 100

    def read_request_headers(self):
        if not super().read_request_headers():
            return False
        if len(self.inheaders) > self.max_fields:
            self.simple_response("431 Request Header Fields Too Large",
                                 f"more than {self.max_fields} header fields")
            return False
        return True

    def simple_response(self, status, msg=""):
        if str(status).startswith("413") and "headers" in msg:
            status = "431 Request Header Fields Too Large"
            self.close_connection = True  # the rest of what it sent is not worth reading
        return super().simple_response(status, msg)


@dataclass
class HttpServer:
    """Flask under cheroot (CherryPy's production WSGI server) in a background thread.

    Idle keep-alive connections wait in one selector (epoll: no select() descriptor ceiling) and
    cost nothing until they ask; a thread pool runs the requests. (waitress, used before, visits
    every open connection on every event and collapsed under 200 keep-alive clients.)
    """

    app: object
    host: str
    port: int
    threads: int = 16
    limits: Limits = Limits()

    def start(self) -> HttpServer:
        server = wsgi.Server((self.host, self.port), self.app, numthreads=self.threads, server_name="provisioner",
                             request_queue_size=2048, timeout=30, shutdown_timeout=2)
        server.max_request_header_size = self.limits.header_bytes  # request line + headers; 0 = no limit
        server.max_request_body_size = self.limits.body_bytes
        server.keep_alive_conn_limit = None  # every booting node may keep its connection (iPXE does)
        request_class = type("Request", (_BoundedRequest,), {"max_fields": self.limits.header_fields})
        server.ConnectionClass = type("Connection", (cheroot_server.HTTPConnection,),
                                      {"RequestHandlerClass": request_class})
        server.error_log = _cheroot_log
        server.prepare()  # binds now: a busy port is an error here, not in the thread
        self._server = server
        self.port = server.bind_addr[1]
        self._thread = threading.Thread(target=server.serve, name="http", daemon=True)
        self._thread.start()
        log.info("http.start bind=%s:%s", self.host, self.port)
        return self

    def stop(self) -> None:
        self._server.stop()
        self._thread.join(timeout=5)


def _cheroot_log(msg: str = "", level: int = logging.INFO, traceback: bool = False) -> None:
    log.log(level, "http: %s", msg, exc_info=traceback)


class BootServices:
    """TFTP + HTTP for one site, sharing one BootService (so both hand out the same decisions)."""

    def __init__(self, service: BootService, *, tftp_bind: str | None, http_bind: str | None,
                 boot_files: Path | None, http_threads: int = 16, http_server=None):
        """`http_server` (e.g. an `HttpPool`) replaces the in-process cheroot server for `http_bind`."""
        self.service = service
        self.tftp = self.http = None
        if http_server is not None:
            self.http = http_server
        elif http_bind:
            host, port = parse_bind(http_bind, 8080)
            self.http = HttpServer(create_app(service), host, port, http_threads, service.limits)
        if tftp_bind:
            from provisioner.netboot.tftp import TftpServer

            host, port = parse_bind(tftp_bind, 69)
            if boot_files is not None:
                Path(boot_files).mkdir(parents=True, exist_ok=True)
            self.tftp = TftpServer(boot_files, resolve=lambda name, _client: service.tftp_file(name),
                                   host=host, port=port)

    def start(self) -> BootServices:
        if self.http:
            try:
                self.http.start()
            except OSError as e:
                raise OSError(e.errno, f"HTTP {self.http.host}:{self.http.port}: {e.strerror or e}") from None
        if self.tftp:
            try:
                self.tftp.start()
            except OSError as e:
                if self.http:
                    self.http.stop()
                raise OSError(e.errno, f"TFTP {self.tftp.host}:{self.tftp.port}: {e.strerror or e}") from None
        return self

    def stop(self) -> None:
        if self.tftp:
            self.tftp.stop()
        if self.http:
            self.http.stop()

    def __enter__(self) -> BootServices:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
