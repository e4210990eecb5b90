"""For the failover tests: one site on a real PostgreSQL, shared by real `provisioner` processes.

Three `provisioner worker` processes and two `provisioner serve` instances (each on a loopback
address of the site's private 127.N block, as a boot server per provisioning network would be),
and the simulated lab in the test process: its rack-1 hosts netboot from the first boot server,
its rack-2 hosts from the second, so a rollout's callbacks arrive through both.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from sqlalchemy import create_engine, text

from provisioner.store.db import normalize_url

NODES = {"r1n01", "r1n02", "r2n01", "r2n02"}
FACTORY = {"r1": ("bmc", "7.00.60"), "r2": ("nic", "14.30.0")}  # what a round flashes away from
CHANGES = ("activated", "inband_flash")  # what the lab BMCs log for a flash


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class Cluster:
    """The processes of one multi-host site, started and stopped by the tests."""

    def __init__(self, site, octet: int, lease_seconds: float, logs: Path):
        self.site, self.octet, self.lease_seconds, self.logs = site, octet, lease_seconds, logs
        self.workers: list[subprocess.Popen] = []
        self.serves: list[tuple[subprocess.Popen, str, tuple[str, int]]] = []
        self.db = create_engine(normalize_url(site.db_url), pool_pre_ping=True)
        self._n = 0

    def env(self) -> dict[str, str]:
        return {**{k: v for k, v in os.environ.items() if k != "PROVISIONER_DB"}, **self.site.env,
                "PROVISIONER_LEASE_SECONDS": str(self.lease_seconds)}

    def _spawn(self, name: str, *args: str) -> subprocess.Popen:
        self._n += 1
        path = self.logs / f"{name}-{self._n}.log"
        with open(path, "w") as out:
            p = subprocess.Popen([sys.executable, "-m", "provisioner", "--as", "alice", *args], env=self.env(),
                                 stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        p.log_path = path
        return p

    def start_serve(self, index: int) -> tuple[str, tuple[str, int]]:
        host = f"127.{self.octet}.200.{index + 1}"
        http, tftp = free_port(host), free_port(host)
        p = self._spawn("serve", "serve", "--tftp-bind", f"{host}:{tftp}", "--http-bind", f"{host}:{http}",
                        "--http-workers", "0")
        self.serves.append((p, f"http://{host}:{http}", (host, tftp)))
        _wait_port(host, http, p)
        return f"http://{host}:{http}", (host, tftp)

    def start_worker(self) -> subprocess.Popen:
        p = self._spawn("worker", "worker", "--poll", "0.1", "-v")
        self.workers.append(p)
        return p

    def live_workers(self) -> int:
        with self.db.connect() as c:
            return c.execute(text("SELECT count(*) FROM leases WHERE key LIKE 'worker:%' AND expires_at > now()")).scalar()

    def wait_workers(self, n: int, within: float = 60) -> None:
        _until(lambda: self.live_workers() >= n, within, f"{n} live workers")

    def holder_pid(self, node: str) -> int | None:
        with self.db.connect() as c:
            holder = c.execute(text("SELECT holder FROM leases WHERE key = :k AND expires_at > now()"),
                               {"k": f"node:{node}"}).scalar()
        return int(holder.split(":")[1]) if holder else None

    def worker_of(self, pid: int) -> subprocess.Popen:
        return next(p for p in self.workers if p.pid == pid)

    def stop(self) -> None:
        for p in [*self.workers, *(s[0] for s in self.serves)]:
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.terminate()
        for p in [*self.workers, *(s[0] for s in self.serves)]:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        self.db.dispose()

    def log_of(self, p: subprocess.Popen) -> str:
        return p.log_path.read_text(errors="replace")


def _wait_port(host: str, port: int, proc, within: float = 60) -> None:
    def up():
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode}")
        try:
            socket.create_connection((host, port), 0.5).close()
            return True
        except OSError:
            return False
    _until(up, within, f"{host}:{port} listening")


def _until(cond, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"not reached within {within}s: {what}")


def split_netboot(lab, serves) -> None:
    """Rack 1's hosts netboot from the first boot server, rack 2's from the second."""
    from provisioner.lab.host import NetbootHost

    first = lab.host
    second = NetbootHost(lab.site, macs=first.macs, firmware_type=first.fw_type, tftp=serves[1][1],
                         http_base=serves[1][0], disk_dir=first.disk_dir, models=first.models,
                         boot_loop=first.boot_loop, flash_seconds=first.flash_seconds)
    lab.site.on_power_on = lambda node, device: (first if node.startswith("r1") else second).on_power_on(node, device)
    lab.second_host = second


def flashes(lab, node: str, since: int = 0) -> Counter:
    """Component -> flashes the node's BMC logged (after its first `since` log entries)."""
    return Counter(e["component"] for e in lab.site.state(node)["log"][since:] if e["event"] in CHANGES)


def log_lengths(lab) -> dict[str, int]:
    return {n: len(lab.site.state(n)["log"]) for n in sorted(NODES)}


def round_apply(site) -> subprocess.Popen:
    env = {**{k: v for k, v in os.environ.items() if k != "PROVISIONER_DB"}, **site.env}
    return subprocess.Popen([sys.executable, "-m", "provisioner", "--as", "alice", "apply", "production", "--yes",
                             "--json"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def holder_pid_text(holder: str) -> int:
    return int(re.split(":", holder)[1])
