"""`serve --metrics-bind` exposes Prometheus metrics that count real boots, TFTP transfers and errors and
time HTTP requests, added up across the HTTP worker processes; `--log-format json` writes one JSON
object per line with stable keys; a rollout counts its nodes, steps and BMC operations."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from helpers import built_site, copy_spec, need_tool, pinned

TESTS = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(TESTS / "netboot"))
from netns import serve  # noqa: E402  (the real `provisioner serve` as a process)

R1N01 = "52-54-00-0a-01-01"


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def curl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "--max-time", "20", *args], capture_output=True, timeout=30)


def samples(text: str) -> dict[str, float]:
    """Prometheus text exposition -> {'name{labels}': value} (labels as exposed, sorted by the client)."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        assert r.status == 200
        return samples(r.read().decode())


def test_serve_exposes_boots_tftp_and_http_latency_across_its_worker_processes_and_logs_json(tmp_path):
    need_tool("curl")
    spec = copy_spec(tmp_path / "spec")
    ctx, rel = built_site(spec, tmp_path / "data")
    ctx.store.update_node("r1n01", state="installing", observed=pinned(rel, "r650"))
    tftp, http, prom = free_port(socket.SOCK_DGRAM), free_port(), free_port()
    proc = serve(None, spec, tmp_path / "data", tmp_path, "--tftp-bind", f"127.0.0.1:{tftp}",
                 "--http-bind", f"127.0.0.1:{http}", "--http-workers", "2", "--boot-files", str(tmp_path / "bf"),
                 "--metrics-bind", f"127.0.0.1:{prom}", "--log-format", "json", "-v")
    try:
        assert f"metrics http://127.0.0.1:{prom}/metrics" in proc.text()
        assert curl(f"tftp://127.0.0.1:{tftp}/pxelinux.cfg/01-{R1N01}").returncode == 0
        upload = tmp_path / "upload.bin"
        upload.write_bytes(b"x")
        assert curl("-T", str(upload), f"tftp://127.0.0.1:{tftp}/upload.bin").returncode != 0  # refused
        for _ in range(3):  # the pool spreads them over its worker processes
            assert curl("-f", f"http://127.0.0.1:{http}/boot/{R1N01}.ipxe").returncode == 0
        assert curl(f"http://127.0.0.1:{http}/healthz").returncode == 0
        m = scrape(prom)
    finally:
        proc.stop()
    assert m['provisioner_boots_total{action="install",kind="pxelinux"}'] == 1
    assert m['provisioner_boots_total{action="install",kind="ipxe"}'] == 3
    assert m['provisioner_tftp_transfers_total{outcome="done"}'] == 1
    assert m['provisioner_tftp_errors_total{reason="write"}'] == 1
    assert m['provisioner_http_request_duration_seconds_count{route="/boot/<mac>.ipxe",status="200"}'] == 3
    assert m['provisioner_http_request_duration_seconds_count{route="/healthz",status="200"}'] >= 1  # + the pool's own probes
    assert m['provisioner_http_request_duration_seconds_sum{route="/boot/<mac>.ipxe",status="200"}'] > 0

    records = [json.loads(line) for line in proc.text().splitlines() if line.startswith("{")]
    decisions = [r for r in records if r["event"] == "netboot.decision"]
    assert len(decisions) == 4, proc.text()[-3000:]  # one per boot config, from serve and from both workers
    for r in decisions:
        assert {"ts", "level", "logger", "event", "msg"} <= r.keys()
        assert (r["level"], r["node"], r["action"]) == ("info", "r1n01", "install")
    assert any(r["event"] == "tftp.drop" and r["reason"] == "write" for r in records)


def test_a_rollout_counts_its_nodes_steps_and_bmc_operations(make_site):
    from provisioner import pipeline
    from provisioner.observability import metrics

    metrics.enable()  # this process: the engine runs here, the lab's BMCs answer real IPMI
    port = free_port()
    server = metrics.serve_exposition("127.0.0.1", port)
    try:
        before = scrape(port)
        site = make_site(nodes={"s1n01", "s1n02"})
        pipeline.promote(site.ctx, site.build(), "staging")
        result = pipeline.apply(site.ctx, "staging")
        after = scrape(port)
    finally:
        server.shutdown()
    assert result.status == "done" and len(result.done) == 2

    def grew(key):
        return after.get(key, 0) - before.get(key, 0)

    assert grew('provisioner_rollout_nodes_total{result="done"}') == 2
    assert grew('provisioner_rollout_steps_total{step="prepare"}') == 2
    ok = sum(grew(k) for k in after if k.startswith('provisioner_bmc_operations_total{driver="ipmi"')
             and k.endswith('outcome="ok"}'))
    assert ok >= 4  # at least a one-time boot and a power cycle per node
    assert not [k for k in after if k.startswith("provisioner_bmc_operations_total") and 'outcome="ok"' not in k
                and grew(k)]


@pytest.fixture
def make_site(tmp_path):
    sys.path.insert(0, str(TESTS / "pipeline"))
    from pipeline_site import Site, tune_spec

    from provisioner.context import Context, Settings

    sites = []

    def make(**tuning):
        spec = tune_spec(copy_spec(tmp_path / "spec"), **tuning)
        site = Site(spec, tmp_path / "data", Context(Settings(spec_dir=spec, data_dir=tmp_path / "data", actor="alice")))
        sites.append(site)
        site.start_lab()
        return site

    yield make
    for s in sites:
        s.stop()
