"""The HTTP boot routes in several worker processes: Flask under gunicorn, gthread workers.

A boot storm is hundreds of keep-alive connections, each asking for a small script rendered for
its node, and one Python process uses one core, so `provisioner serve` runs the routes in a pool
of worker processes (one per core by default). It binds the listening socket itself (a busy port
is a one-line error; port 0 becomes a real port), then hands the socket to a gunicorn arbiter in a
child process (`fd://N`) whose workers each open the store and render on their own core.
In-process embedding (the lab, the tests' sites, `--http-workers 0`) uses `HttpServer` (cheroot).

    python -m provisioner.serve.http_pool --fd N --spec DIR --data DIR --http-base URL [--workers 2]
        [--keep-boots SECONDS] [--keep-events SECONDS]

The database URL (it may carry a password) reaches the child in its environment, as
PROVISIONER_POOL_DB_URL: a command line is readable by every user of the host (`ps`,
/proc/PID/cmdline), a process's environment only by its owner and root.
"""

from __future__ import annotations

import argparse
import ctypes
import http.client
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

from provisioner.observability import logs, metrics
from provisioner.store.boots import Retention

log = logging.getLogger("provisioner.serve")

DB_URL_ENV = "PROVISIONER_POOL_DB_URL"


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class HttpPool:
    """The HTTP routes in a gunicorn child process with `workers` worker processes."""

    def __init__(self, host: str, port: int, *, spec_dir: Path, data_dir: Path, db_url: str | None,
                 http_base: str | None, workers: int = 2, threads: int = 8, verbose: bool = False,
                 retention: Retention | None = None):
        self.host, self.port = host, port
        self.retention = retention or Retention()
        self.spec_dir, self.data_dir, self.db_url = Path(spec_dir), Path(data_dir), db_url
        self.http_base, self.workers, self.threads, self.verbose = http_base, workers, threads, verbose
        self.proc: subprocess.Popen | None = None

    def start(self, ready_timeout: float = 60.0) -> HttpPool:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
            sock.listen(2048)
        except OSError:
            sock.close()
            raise
        self.port = sock.getsockname()[1]
        self.http_base = self.http_base or f"http://{self.host}:{self.port}"
        cmd = [sys.executable, "-m", "provisioner.serve.http_pool", "--fd", str(sock.fileno()),
               "--spec", str(self.spec_dir), "--data", str(self.data_dir), "--http-base", self.http_base,
               "--workers", str(self.workers), "--threads", str(self.threads),
               "--keep-boots", str(self.retention.closed_boots.total_seconds()),
               "--keep-events", str(self.retention.node_events.total_seconds())]
        env = {k: v for k, v in os.environ.items() if k != DB_URL_ENV}
        if self.db_url:
            env[DB_URL_ENV] = self.db_url  # not on the command line: see the module's docstring
        if self.verbose:
            cmd.append("--verbose")
        try:
            self.proc = subprocess.Popen(cmd, pass_fds=[sock.fileno()], preexec_fn=_die_with_parent, env=env)
        finally:
            sock.close()  # the child holds its own copy
        self._wait_ready(ready_timeout)
        log.info("http.start bind=%s:%s workers=%d", self.host, self.port, self.workers)
        return self

    def _wait_ready(self, timeout: float) -> None:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else "::1" if self.host == "::" else self.host
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise OSError(0, f"the HTTP workers exited at start (exit code {self.proc.returncode})")
            # keep-alive, and this side closes first: the server's port keeps no TIME_WAIT behind
            conn = http.client.HTTPConnection(host, self.port, timeout=2)
            try:
                conn.request("GET", "/healthz")
                r = conn.getresponse()
                r.read()
                if r.status == 200:
                    return
            except OSError:
                pass
            finally:
                conn.close()
            time.sleep(0.05)  # not up yet (refused, or not answering 200): ask again shortly
        self.stop()
        raise OSError(0, f"the HTTP workers did not answer within {timeout:.0f} s")

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)  # gunicorn: graceful stop of the workers
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def main(argv: list[str] | None = None) -> int:
    from gunicorn.app.base import BaseApplication

    ap = argparse.ArgumentParser(prog="provisioner.serve.http_pool", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fd", type=int, required=True, help="listening socket inherited from the parent")
    ap.add_argument("--spec", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--http-base", required=True, help="base URL nodes use to reach this server")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--keep-boots", type=float, default=Retention().closed_boots.total_seconds(), help="seconds")
    ap.add_argument("--keep-events", type=float, default=Retention().node_events.total_seconds(), help="seconds")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args(argv)
    args.db_url = os.environ.pop(DB_URL_ENV, None)  # workers are forked: they inherit it from here
    logs.configure(level=logging.INFO if args.verbose else logging.WARNING)  # the format serve chose
    metrics.enable_from_env()

    class Pool(BaseApplication):
        def load_config(self):
            for key, value in {
                "bind": [f"fd://{args.fd}"], "workers": args.workers, "worker_class": "gthread",
                "threads": args.threads, "keepalive": 30, "graceful_timeout": 2, "timeout": 60,
                "worker_connections": 4096, "accesslog": None, "errorlog": "-",
                "loglevel": "info" if args.verbose else "warning", "proc_name": "provisioner-http",
                # gunicorn's own defaults, said out loud: the README's security model lists them
                "limit_request_line": 4094, "limit_request_fields": 100, "limit_request_field_size": 8190,
            }.items():
                self.cfg.set(key, value)

        def load(self):  # in each worker, after the fork: its own store connections
            from provisioner.api.app import create_app
            from provisioner.context import Context, Settings
            from provisioner.netboot.service import BootService

            ctx = Context(Settings(spec_dir=args.spec, data_dir=args.data, db_url=args.db_url))
            retention = Retention(closed_boots=timedelta(seconds=args.keep_boots),
                                  node_events=timedelta(seconds=args.keep_events))
            return create_app(BootService(ctx.store, ctx.artifacts, args.http_base, retention=retention))

    Pool().run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
