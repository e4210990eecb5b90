"""For the failover tests: one site on a real PostgreSQL, shared by real `provisioner` processes.

Three `provisioner worker` processes and two `provisioner serve` instances (each on a loopback
address of the site's private 127.N block, as a boot server per provisioning network would be),
and the simulated lab in the test process: its rack-1 hosts netboot from the first boot server,
its rack-2 hosts from the second, so a rollout's callbacks arrive through both.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from sqlalchemy import create_engine, select, text

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

    def _spawn(self, name: str, *args: str, env: dict | None = None) -> subprocess.Popen:
        self._n += 1
        path = self.logs / f"{name}-{self._n}.log"
        with open(path, "w") as out:
            p = subprocess.Popen([sys.executable, "-m", "provisioner", *args],
                                 env={**self.env(), **(env or {})},
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
        # each worker a host of its own, as in a real site: a dead worker's nodes are taken over
        # when its leases expire (on one host, a holder whose process is gone is seen at once)
        p = self._spawn("worker", "worker", "--poll", "0.1", "-v", env={"PROVISIONER_HOST_ID": f"host{self._n + 1}"})
        self.workers.append(p)
        return p

    def live_leases(self) -> dict[str, str]:
        """key -> holder of every lease not expired (read with the store's types: SQLite or PostgreSQL)."""
        from provisioner.store.models import LeaseRow
        from provisioner.store.repo import aware, now

        with self.db.connect() as c:
            rows = c.execute(select(LeaseRow.key, LeaseRow.holder, LeaseRow.expires_at)).all()
        return {k: h for k, h, exp in rows if aware(exp) > now()}

    def live_workers(self) -> int:
        return sum(k.startswith("worker:") for k in self.live_leases())

    def wait_workers(self, n: int, within: float = 300) -> None:
        _until(lambda: self.live_workers() >= n, within, f"{n} live workers")

    def holder_pid(self, node: str) -> int | None:
        holder = self.live_leases().get(f"node:{node}")
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


def _wait_port(host: str, port: int, proc, within: float = 300) -> None:
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
    return subprocess.Popen([sys.executable, "-m", "provisioner", "apply", "production", "--yes",
                             "--json"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def to_factory(c: Cluster) -> dict[str, int]:
    """Flash every node back to the factory version by hand; the log lengths before the round."""
    for node in sorted(NODES):
        component, version = FACTORY[node[:2]]
        if c.lab.site.state(node)["firmware"][component]["active"] != version:
            c.lab.site.hand_flash(node, component, version)
    return log_lengths(c.lab)


def newest_rollout(c: Cluster) -> int | None:
    with c.db.connect() as conn:
        return conn.execute(text("SELECT max(id) FROM rollouts")).scalar()


def mid_flash(c: Cluster, after: int | None, step: str, within: float = 300) -> tuple[int, str]:
    """(rollout, node) once a node of a rollout newer than `after` has begun `step` and not ended it."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        with c.db.connect() as conn:
            rows = conn.execute(text(
                "SELECT rollout_id, node, phase FROM rollout_steps WHERE rollout_id > :a AND step = :s ORDER BY seq"),
                {"a": after or 0, "s": step}).all()
        open_ = {}
        for rid, node, phase in rows:
            open_[(rid, node)] = phase == "begin"
        caught = [k for k, begun in open_.items() if begun]
        if caught:
            return caught[0]
        time.sleep(0.01)
    raise AssertionError(f"no node began {step} within {within}s")


def finish(c: Cluster, apply) -> dict:
    out, err = apply.communicate(timeout=600)
    assert apply.returncode == 0, err[-3000:]
    assert "handed to" in err, err[-2000:]  # the workers ran it, not the apply process
    result = json.loads(out)
    assert (result["status"], result["failed"]) == ("done", {}), result
    assert sorted(result["done"]) == sorted(NODES)
    return result


def assert_flashed_once(c: Cluster, before: dict[str, int]) -> None:
    for node in sorted(NODES):
        component, _ = FACTORY[node[:2]]
        assert flashes(c.lab, node, before[node]) == {component: 1}, (node, c.lab.site.state(node)["log"][before[node]:])


def begins(c: Cluster, rid: int, node: str) -> list[str]:
    with c.db.connect() as conn:
        return [s for (s,) in conn.execute(text(
            "SELECT step FROM rollout_steps WHERE rollout_id = :r AND node = :n AND phase = 'begin' ORDER BY seq"),
            {"r": rid, "n": node})]


def assert_limits_held(c: Cluster, rid: int) -> None:
    """From the step log, in commit order: the canary ended before wave 1 began; at most 3 nodes
    (max_concurrency) and 2 per rack at once, counted over every worker."""
    with c.db.connect() as conn:
        waves = dict(conn.execute(text("SELECT node, wave FROM rollout_nodes WHERE rollout_id = :r"), {"r": rid}).all())
        rows = conn.execute(text("SELECT seq, node FROM rollout_steps WHERE rollout_id = :r ORDER BY seq"),
                            {"r": rid}).all()
    span: dict[str, list[int]] = {}
    for seq, node in rows:
        span.setdefault(node, [seq, seq])[1] = seq
    canary = [n for n, w in waves.items() if w == 0]
    assert max(span[n][1] for n in canary) < min(span[n][0] for n, w in waves.items() if w == 1)
    for seq, _ in rows:
        busy = [n for n, (a, b) in span.items() if a <= seq <= b]
        assert len(busy) <= 3, (seq, busy)
        assert all(sum(n[:2] == rack for n in busy) <= 2 for rack in ("r1", "r2")), (seq, busy)
