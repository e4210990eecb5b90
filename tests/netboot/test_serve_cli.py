"""`provisioner serve` as a real process on loopback high ports, driven by real clients (curl over
TFTP and HTTP): per-node configs, Debian's bootloaders, callbacks, a clean stop, a clean failure."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import built_site, copy_spec, need_tool, pinned
from netns import serve

R1N01_MAC = "52:54:00:0a:01:01"
DEBIAN_UNDIONLY = "/usr/lib/ipxe/undionly.kpxe"
DEBIAN_SNPONLY = "/usr/lib/ipxe/snponly.efi"


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def curl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "--max-time", "20", *args], capture_output=True, timeout=30)


def sha256_file(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class Site:
    def __init__(self, root: Path):
        self.spec = copy_spec(root / "spec")
        self.data = root / "data"
        self.boot_files = root / "boot-files"
        self.work = root
        self.ctx, self.rel = built_site(self.spec, self.data)
        self.ctx.store.update_node("r1n01", state="installing", observed=pinned(self.rel, "r650"))

    def start(self, *extra: str, name: str = "serve"):
        self.tftp_port, self.http_port = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_STREAM)
        return serve(None, self.spec, self.data, self.work, "--tftp-bind", f"127.0.0.1:{self.tftp_port}",
                     "--http-bind", f"127.0.0.1:{self.http_port}", "--boot-files", str(self.boot_files),
                     *extra, name=name)

    @property
    def tftp(self) -> str:
        return f"tftp://127.0.0.1:{self.tftp_port}"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    need_tool("curl")
    s = Site(tmp_path_factory.mktemp("serve"))
    s.proc = s.start("-v")
    yield s
    s.proc.stop()


def test_tftp_hands_a_node_its_pxelinux_config_from_the_gate(site):
    r = curl(f"{site.tftp}/pxelinux.cfg/01-52-54-00-0a-01-01")
    assert r.returncode == 0, r.stderr.decode() + site.proc.describe()
    text = r.stdout.decode()
    assert text.startswith(f"# provisioner install: node r1n01, release {site.rel.id}")
    assert "DEFAULT install" in text
    assert f"provisioner.mode=install provisioner.node=r1n01 provisioner.release={site.rel.id}" in text
    assert f"provisioner.callback={site.http}/api/v1/callback/r1n01" in text  # nodes are sent to our HTTP
    event = site.ctx.store.node_events("r1n01")[-1]
    assert (event["source"], event["event"], event["details"]["kind"]) == ("netboot", "install", "pxelinux")


@pytest.mark.parametrize("name, debian", [("undionly.kpxe", DEBIAN_UNDIONLY), ("snponly.efi", DEBIAN_SNPONLY)])
def test_tftp_serves_debians_ipxe_copied_into_the_boot_files(site, name, debian):
    need_tool(debian)
    r = curl("--tftp-blksize", "1468", f"{site.tftp}/{name}")
    assert r.returncode == 0, r.stderr.decode() + site.proc.describe()
    assert hashlib.sha256(r.stdout).hexdigest() == sha256_file(debian)
    assert sha256_file(site.boot_files / name) == sha256_file(debian)


def test_tftp_says_not_found_for_a_missing_file_and_local_boot_for_an_unknown_mac(site):
    r = curl(f"{site.tftp}/no-such-file.bin")
    assert r.returncode == 68, r.stderr  # CURLE_TFTP_NOTFOUND: curl read TFTP error 1 from us
    r = curl(f"{site.tftp}/pxelinux.cfg/01-52-54-00-99-99-99")
    assert r.returncode == 0 and b"LOCALBOOT 0" in r.stdout and b"MAC not in the inventory" in r.stdout
    assert site.proc.alive()


def test_http_hands_out_the_per_node_ipxe_script_and_takes_its_callback(site):
    r = curl("-f", f"{site.http}/boot/52-54-00-0a-01-01.ipxe")
    assert r.returncode == 0, r.stderr.decode() + site.proc.describe()
    script = r.stdout.decode()
    assert script.startswith("#!ipxe") and "provisioner.mode=install provisioner.node=r1n01" in script
    started = next(w for line in script.splitlines() if line.startswith("imgfetch --name started")
                   for w in line.split() if w.startswith("http"))
    assert started.startswith(f"{site.http}/api/v1/callback/r1n01/started?token=")
    r = curl("-f", started)
    assert r.returncode == 0 and json.loads(r.stdout) == {"ok": True, "node": "r1n01", "event": "started"}
    last = site.ctx.store.node_events("r1n01")[-1]
    assert (last["source"], last["event"], last["details"]["boot_action"]) == ("callback", "started", "install")
    # the bootstrap script that DHCP points iPXE at chains to the per-MAC script on this server
    r = curl("-f", f"{site.http}/boot.ipxe")
    assert f"chain {site.http}/boot/${{net0/mac:hexhyp}}.ipxe" in r.stdout.decode()


def test_sigterm_stops_the_server_cleanly_within_3_seconds(tmp_path):
    need_tool("curl")
    s = Site(tmp_path)
    proc = s.start()
    try:
        assert curl("-f", f"{s.http}/healthz").returncode == 0
        assert curl(f"{s.tftp}/undionly.kpxe").returncode == 0
        t0 = time.monotonic()
        proc.popen.send_signal(signal.SIGTERM)
        rc = proc.popen.wait(10)
        took = time.monotonic() - t0
    finally:
        proc.stop()
    out = proc.text()
    assert rc == 0, out
    assert took < 3, f"took {took:.1f} s to stop"
    assert out.rstrip().endswith("stopped") and "Traceback" not in out
    # and the ports are free again
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t, socket.socket(socket.AF_INET,
                                                                              socket.SOCK_DGRAM) as u:
        t.bind(("127.0.0.1", s.http_port))
        u.bind(("127.0.0.1", s.tftp_port))


@pytest.mark.parametrize("busy, workers", [("tftp", "2"), ("http", "2"), ("http", "0")])
def test_a_port_in_use_is_a_one_line_error_not_a_traceback(tmp_path, busy, workers):
    s = Site(tmp_path)
    kind = socket.SOCK_DGRAM if busy == "tftp" else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as squatter:
        squatter.bind(("127.0.0.1", 0))
        if kind == socket.SOCK_STREAM:
            squatter.listen()
        port = squatter.getsockname()[1]
        other = free_port(socket.SOCK_STREAM if busy == "tftp" else socket.SOCK_DGRAM)
        tftp, http = (port, other) if busy == "tftp" else (other, port)
        env = {**os.environ, "COLUMNS": "200"}
        env.pop("PROVISIONER_DB", None)
        t0 = time.monotonic()
        r = subprocess.run([sys.executable, "-m", "provisioner", "--spec", str(s.spec), "--data", str(s.data),
                            "serve", "--tftp-bind", f"127.0.0.1:{tftp}", "--http-bind", f"127.0.0.1:{http}",
                            "--boot-files", str(s.boot_files), "--http-workers", workers],
                           capture_output=True, text=True, timeout=60, env=env)
    output = (r.stdout + r.stderr).strip()
    assert r.returncode != 0
    assert "Traceback" not in output
    assert len(output.splitlines()) == 1, output
    assert "Address already in use" in output and output.startswith("error:"), output
    assert time.monotonic() - t0 < 30


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                kids = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            out += kids
            todo += kids
    return out


def _is_pool(pid: int) -> bool:
    try:
        return b"http_pool" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # gone meanwhile
        return False


def _http_workers(pid: int) -> list[int]:
    """The gunicorn workers: grandchildren of serve (serve -> arbiter -> workers)."""
    arbiters = [c for c in _descendants(pid) if _is_pool(c)]
    return [w for a in arbiters[:1] for w in _descendants(a)]


def test_serve_says_how_many_http_worker_processes_and_a_killed_worker_is_replaced(tmp_path):
    need_tool("curl")
    s = Site(tmp_path)
    proc = s.start("--http-workers", "2")
    try:
        assert "2 worker processes" in proc.text(), proc.describe()
        workers = _http_workers(proc.popen.pid)
        assert len(workers) == 2, (workers, proc.describe())
        os.kill(workers[0], signal.SIGKILL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (len(now := _http_workers(proc.popen.pid)) < 2 or workers[0] in now):
            time.sleep(0.1)
        assert len(now) == 2 and workers[0] not in now, now
        for _ in range(20):  # every request is answered, whichever worker takes it
            r = curl("-f", f"{s.http}/boot/52-54-00-0a-01-01.ipxe")
            assert r.returncode == 0 and b"provisioner.mode=install" in r.stdout, r.stderr + proc.text().encode()
    finally:
        proc.stop()


def test_serve_killed_with_sigkill_leaves_no_http_worker_holding_the_port(tmp_path):
    s = Site(tmp_path)
    proc = s.start()
    children = _descendants(proc.popen.pid)
    assert children, proc.describe()
    os.kill(proc.popen.pid, signal.SIGKILL)
    proc.popen.wait(5)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(Path(f"/proc/{c}").exists() for c in children):
        time.sleep(0.1)
    assert not [c for c in children if Path(f"/proc/{c}").exists()], "HTTP workers outlived serve"
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
        t.bind(("127.0.0.1", s.http_port))


def test_serve_with_http_workers_0_serves_http_from_its_own_process(tmp_path):
    need_tool("curl")
    s = Site(tmp_path)
    proc = s.start("--http-workers", "0")
    try:
        assert "worker processes" not in proc.text()
        assert not [c for c in _descendants(proc.popen.pid) if _is_pool(c)]
        r = curl("-f", f"{s.http}/boot/52-54-00-0a-01-01.ipxe")
        assert r.returncode == 0 and b"provisioner.mode=install provisioner.node=r1n01" in r.stdout, r.stderr
    finally:
        proc.stop()
