"""Benchmark: 50 concurrent authenticated API clients reading the status of 1,000 nodes.

    python bench/api_status.py [--nodes 1000] [--clients 50] [--seconds 10] [--processes N]

`provisioner api` runs in its own process on a store seeded with a 1,000-node site
(scripts/make_big_spec.py), its production release pointed at and every node's last BMC read
stored (as `status` answers from the stored reads by default). The load comes from wrk with
`--clients` keep-alive connections, each request carrying one of `--clients` accounts' API
tokens (a viewer each) and reading GET /api/v1/status with Accept-Encoding: gzip; a Lua hook
counts every answer that is not a 200 gzipped body (one answer's nodes are checked first). A warm-up
(`--warmup` seconds of the same load, not counted) lets every server process compute its first
status and look its tokens up; then the measured run. Prints requests/s, latency p50/p95/p99,
failures, the server's CPU per request (all its processes), and the load average. Goal: p99
under 100 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from http_boot import free_port  # noqa: E402
from pipeline_scale import machine, release  # noqa: E402
from procstat import tree_cpu_seconds  # noqa: E402

from provisioner.context import Context, Settings  # noqa: E402


def seed(spec: Path, data: Path, nodes: int, clients: int) -> list[str]:
    """The site's store: a release in production, every node's firmware read; a viewer token per client."""
    subprocess.run([sys.executable, str(ROOT / "scripts/make_big_spec.py"), str(nodes), str(spec)], check=True)
    ctx = Context(Settings(spec_dir=spec, data_dir=data, actor="bench"))
    rid = release(ctx, spec, "bench")
    ctx.store.point_environment("production", rid, "bench", "bench")
    pins = {m.model: {c.name: c.version for c in m.components} for m in ctx.spec.manifests.values()}
    from provisioner.store.models import NodeRow

    with ctx.store.db.session() as s:
        for row in s.query(NodeRow):
            row.state, row.observed, row.release_id = "ready", pins[row.model], rid
    tokens = []
    for i in range(clients):
        ctx.store.accounts.add(f"client{i}", "viewer", "bench")
        tokens.append(ctx.store.accounts.create_token(f"client{i}", "bench", "bench")[0])
    return tokens


def start_api(spec: Path, data: Path, work: Path, token: str, threads: int | None = None, processes: int = 1
              ) -> tuple[subprocess.Popen, int, int]:
    import http.client

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "provisioner", "--spec", str(spec), "--data", str(data),
                               "api", "--bind", f"127.0.0.1:{port}",
                               *(("--threads", str(threads)) if threads else ()), "--processes", str(processes)],
                              stdout=subprocess.DEVNULL, stderr=open(work / "api.log", "wb"))
    for _ in range(300):
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            c.request("GET", "/api/v1/status", headers={"Authorization": f"Bearer {token}"})
            r = c.getresponse()
            if r.status == 200:
                body = json.loads(r.read())
                c.close()
                return server, port, len(body["nodes"])
        except OSError:
            time.sleep(0.1)
    server.kill()  # never leave it running
    server.wait()
    raise SystemExit(f"the API did not come up; see {work}/api.log")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--warmup", type=float, default=2, help="seconds of load before the measured run (not counted)")
    ap.add_argument("--processes", type=int, default=1, help="`provisioner api --processes`: processes on the port")
    ap.add_argument("--threads", type=int, help="the API server's worker threads (default: its own default)")
    ap.add_argument("--py-spy", metavar="FILE", help="profile the API server during the load (py-spy, raw "
                    "collapsed stacks into FILE)")
    args = ap.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk not found: apt-get install wrk")
    print(f"machine: {machine()}; load average before: {os.getloadavg()[0]:.1f}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="provisioner-apibench-"))
    spec, data = work / "spec", work / "data"
    tokens = seed(spec, data, args.nodes, args.clients)
    (work / "tokens.txt").write_text("\n".join(tokens) + "\n")
    server, port, seen = start_api(spec, data, work, tokens[0], args.threads, args.processes)
    for _ in range(1200):  # every copy listening before the load starts
        rows = [r.split() for r in Path("/proc/net/tcp").read_text().splitlines()[1:]]
        if sum(1 for r in rows if r[1].endswith(f":{port:04X}") and r[3] == "0A") >= args.processes:
            break
        time.sleep(0.05)
    if seen != args.nodes:
        raise SystemExit(f"the status lists {seen} nodes, not {args.nodes}")
    try:
        def load(seconds: float):
            return subprocess.run(["wrk", "-t", "2", "-c", str(args.clients), "-d", f"{int(seconds)}s",
                                   "--timeout", "10s", "-s", str(ROOT / "bench/wrk_api.lua"),
                                   f"http://127.0.0.1:{port}/", "--", str(work / "tokens.txt"), str(args.nodes)],
                                  capture_output=True, text=True, timeout=seconds + 60)

        if args.warmup:  # every process's first status and token look-ups: start-up, not steady state
            load(args.warmup)
        cpu0 = tree_cpu_seconds(server.pid)
        spy = subprocess.Popen([shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy"), "record",
                                "-p", str(server.pid), "-r", "200", "--gil", "-d", str(int(args.seconds)), "--format",
                                "raw", "-o", args.py_spy], stdout=subprocess.DEVNULL) if args.py_spy else None
        out = load(args.seconds)
        cpu = tree_cpu_seconds(server.pid) - cpu0
        if spy is not None:
            spy.wait(timeout=60)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=15)
    m = re.search(r"RESULT (.*)", out.stdout)
    if not m:
        raise SystemExit(f"wrk gave no result:\n{out.stdout}\n{out.stderr}")
    r = {k: float(v) for k, v in (kv.split("=") for kv in m.group(1).split())}
    rate = r["requests"] / r["seconds"]
    print(f"\nGET /api/v1/status ({args.nodes} nodes), {args.clients} concurrent authenticated clients (wrk), "
          f"provisioner api --processes {args.processes}: "
          f"{r['requests']:.0f} requests in {r['seconds']:.1f} s = {rate:.0f} req/s; "
          f"p50 {r['p50_ms']:.1f} ms, p95 {r['p95_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms; "
          f"failures {r['bad'] + r['errors']:.0f}; server CPU {cpu * 1000 / max(1, r['requests']):.2f} ms/request; "
          f"load average after: {os.getloadavg()[0]:.1f}")
    print(f"goal p99 < 100 ms: {'met' if r['p99_ms'] < 100 else 'NOT met'}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
