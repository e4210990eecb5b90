"""More processes for the operator API on its one port: `provisioner api --processes N`.

One Python process answers on one core at a time (the GIL), so a site whose automation polls
hard runs several. The first process binds the port with SO_REUSEPORT and then starts N-1 copies
of itself that bind the same port (`--join`); the kernel spreads new connections over them
(Linux hashes each connection to one listening socket). Nothing a request needs lives only in
one process: sessions and tokens are in the store and in signed cookies, rollout events are read
from the store, a pending single sign-on travels sealed in the browser's cookie. Only the first
process signs audit checkpoints. A copy that dies is started again; the copies end with the
first process, even after `kill -9` (PR_SET_DEATHSIG), and drain their rollouts on SIGTERM.

The database URL (it may carry a password) reaches the copies in their environment, never on a
command line (readable by every user of the host).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time

from provisioner.serve.http_pool import _die_with_parent

log = logging.getLogger("provisioner.api.operator")

RESTART_PAUSE = 1.0  # seconds between restarts of a copy that keeps dying


class Copies:
    def __init__(self, count: int, argv: list[str], env: dict[str, str]):
        self.count, self.argv, self.env = count, argv, env
        self.procs: list[subprocess.Popen] = []
        self._last_start = 0.0

    def _spawn(self) -> subprocess.Popen:
        self._last_start = time.monotonic()
        return subprocess.Popen([sys.executable, "-m", "provisioner", *self.argv], env=self.env,
                                preexec_fn=_die_with_parent, stdin=subprocess.DEVNULL)

    def start(self) -> Copies:
        self.procs = [self._spawn() for _ in range(self.count)]
        log.info("api.copies started=%d pids=%s", self.count, ",".join(str(p.pid) for p in self.procs))
        return self

    def watch(self) -> None:
        """Start again a copy that ended (crashed, killed, out of memory)."""
        for i, p in enumerate(self.procs):
            if p.poll() is not None and time.monotonic() - self._last_start >= RESTART_PAUSE:
                log.warning("api.copy.exit pid=%d code=%s (started again)", p.pid, p.returncode)
                self.procs[i] = self._spawn()

    def stop(self, timeout: float = 30.0) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)  # each drains its running rollouts, recorded interrupted
        deadline = time.monotonic() + timeout
        for p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def copy_argv(*, spec_dir, data_dir, host: str, port: int, threads: int, tls_cert, tls_key,
              oidc: tuple[str | None, str | None, str | None], verbose: bool) -> list[str]:
    bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    argv = ["--spec", str(spec_dir), "--data", str(data_dir), "api", "--join", "--no-checkpoints",
            "--bind", bind, "--threads", str(threads)]
    if tls_cert:
        argv += ["--tls-cert", str(tls_cert), "--tls-key", str(tls_key)]
    issuer, client_id, redirect = oidc
    if issuer:
        argv += ["--oidc-issuer", issuer, "--oidc-client-id", client_id, "--oidc-redirect", redirect]
    if verbose:
        argv.append("--verbose")
    return argv


def copy_env(db_url: str | None) -> dict[str, str]:
    env = dict(os.environ)
    if db_url:
        env["PROVISIONER_DB"] = db_url  # the global --db's variable: not on a command line
    return env
