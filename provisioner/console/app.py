"""A small app that serves only the console (tests, the demo, the benchmark), on cheroot, TLS optional.

In production the blueprint is registered on the operator API's app (`provisioner api`); this
factory exists so the console can be run and tested on its own.
"""

from __future__ import annotations

import logging
import threading

from cheroot import wsgi
from flask import Flask, redirect

from provisioner.console import console_blueprint
from provisioner.context import Context


def create_console_app(ctx: Context, **options) -> Flask:
    """`options` go to console_blueprint (policy, oidc, poll_seconds, stream_seconds, key)."""
    app = Flask("provisioner.console")
    bp = console_blueprint(ctx, **options)
    app.register_blueprint(bp)
    app.extensions["console"] = bp.console
    app.add_url_rule("/", "root", lambda: redirect("/console/"))
    return app


class ConsoleServer:
    """The app on cheroot in a background thread; `url` once started. One thread per open page
    stream, so `threads` bounds how many browsers can watch a rollout at once."""

    def __init__(self, app: Flask, host: str = "127.0.0.1", port: int = 0, *, tls: tuple[str, str] | None = None,
                 threads: int = 32):
        self.server = wsgi.Server((host, port), app, numthreads=threads, shutdown_timeout=1)
        self.server.error_log = lambda *a, **k: logging.getLogger("console.http").debug("%s", a[:1])
        self.scheme = "http"
        if tls:
            from cheroot.ssl.builtin import BuiltinSSLAdapter

            self.server.ssl_adapter = BuiltinSSLAdapter(*tls)
            self.scheme = "https"
        self._thread: threading.Thread | None = None
        self._console = app.extensions.get("console")

    def start(self) -> ConsoleServer:
        self.server.prepare()
        self._thread = threading.Thread(target=self.server.serve, name="console-http", daemon=True)
        self._thread.start()
        return self

    @property
    def url(self) -> str:
        host, port = self.server.bind_addr[:2]
        return f"{self.scheme}://{host}:{port}/console/"

    def stop(self) -> None:
        if self._console is not None:
            self._console.closing.set()  # open event streams end at their next look
        self.server.stop()
        if self._thread:
            self._thread.join(5)
