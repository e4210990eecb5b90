"""Running a site's boot services: the TFTP server and the HTTP server (cheroot), each optional."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from cheroot import wsgi

from provisioner.api.app import create_app
from provisioner.netboot.service import BootService

log = logging.getLogger("provisioner.netboot")


def parse_bind(text: str, default_port: int) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host:
        return text, default_port
    return host.strip("[]"), int(port)


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

    def start(self) -> HttpServer:
        server = wsgi.Server((self.host, self.port), self.app, numthreads=self.threads, server_name="provisioner",
                             request_queue_size=2048, timeout=30, shutdown_timeout=2)
        server.keep_alive_conn_limit = None  # every booting node may keep its connection (iPXE does)
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
            self.http = HttpServer(create_app(service), host, port, http_threads)
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
