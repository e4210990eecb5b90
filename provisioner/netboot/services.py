"""Running a site's boot services: the TFTP server and the HTTP server (waitress), each optional."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from waitress.server import create_server

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
    """Flask under waitress (a production WSGI server) in a background thread."""

    app: object
    host: str
    port: int
    threads: int = 16

    def start(self) -> HttpServer:
        self._server = create_server(self.app, host=self.host, port=self.port, threads=self.threads,
                                     connection_limit=2000, backlog=2048, channel_timeout=30,
                                     asyncore_use_poll=True,  # select() fails past fd 1024 (big labs)
                                     ident="provisioner")
        self.port = self._server.effective_port
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="http", daemon=True)
        self._thread.start()
        log.info("http.start bind=%s:%s", self.host, self.port)
        return self

    def _run(self) -> None:
        try:
            self._server.run()
        except (OSError, ValueError):
            if not self._stopping:  # closing the sockets under waitress's select() is how it stops
                raise

    def stop(self) -> None:
        self._stopping = True
        self._server.close()
        # waitress's run() loop notices the closed map; give its thread a moment
        self._thread.join(timeout=2)


class BootServices:
    """TFTP + HTTP for one site, sharing one BootService (so both hand out the same decisions)."""

    def __init__(self, service: BootService, *, tftp_bind: str | None, http_bind: str | None,
                 boot_files: Path | None, http_threads: int = 16, http_server=None):
        """`http_server` (e.g. an `HttpPool`) replaces the in-process waitress server for `http_bind`."""
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
