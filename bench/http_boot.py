"""Benchmark: per-node iPXE scripts over HTTP under a boot storm.

    python bench/http_boot.py [--nodes 1000] [--clients 200] [--requests 4000]

`provisioner serve` (Flask under waitress) runs in its own process with a 1,000-node site whose
nodes are all due a reimage (the heaviest path: gate decision, token issued and stored, node
event written, template rendered). 200 client threads in this process, each on a keep-alive
connection, fetch /boot/<mac>.ipxe for random nodes. Prints scripts/s and latency percentiles.
Then the server-side cost alone: BootService.boot_config in-process, p50/p99 per render.
Goals: at least 1,000 scripts/s; render p99 under 2 ms.
"""

from __future__ import annotations

import argparse
import http.client
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from pipeline_scale import machine, release  # noqa: E402

from provisioner.context import Context, Settings  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--requests", type=int, default=4000)
    ap.add_argument("--renders", type=int, default=2000)
    ap.add_argument("--max-seconds", type=float, default=600, help="Dump every thread's stack and exit if stuck.")
    args = ap.parse_args()
    import faulthandler

    faulthandler.dump_traceback_later(args.max_seconds, exit=True)
    print(f"machine: {machine()}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="provisioner-httpbench-"))
    spec, data = work / "spec", work / "data"
    subprocess.run([sys.executable, str(ROOT / "scripts/make_big_spec.py"), str(args.nodes), str(spec)], check=True)
    ctx = Context(Settings(spec_dir=spec, data_dir=data, actor="bench"))
    rid = release(ctx, spec, "bench")
    ctx.store.point_environment("production", rid, "bench", "bench")
    pins = {m.model: {c.name: c.version for c in m.components} for m in ctx.spec.manifests.values()}
    from provisioner.store.models import NodeRow

    with ctx.store.db.session() as s:
        for row in s.query(NodeRow):
            row.state, row.observed = "installing", pins[row.model]
    macs = [n.macs[0].replace(":", "-") for _, n in ctx.spec.nodes()]

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "provisioner", "--spec", str(spec), "--data", str(data),
                               "serve", "--tftp-bind", "off", "--http-bind", f"127.0.0.1:{port}"],
                              stdout=subprocess.DEVNULL, stderr=open(work / "serve.log", "wb"))
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    lat: list[float] = []
    failures = [0]
    lock = threading.Lock()
    per_client = args.requests // args.clients
    start_gate = threading.Barrier(args.clients + 1)

    def client(seed: int) -> None:
        rnd = random.Random(seed)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        mine = []
        start_gate.wait()
        for _ in range(per_client):
            t0 = time.perf_counter()
            try:
                conn.request("GET", f"/boot/{rnd.choice(macs)}.ipxe")
                r = conn.getresponse()
                body = r.read()
                ok = r.status == 200 and b"provisioner.mode=install" in body
            except OSError:
                ok = False
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            mine.append(time.perf_counter() - t0)
            if not ok:
                with lock:
                    failures[0] += 1
        with lock:
            lat.extend(mine)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
    for t in threads:
        t.start()
    start_gate.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    server.send_signal(signal.SIGTERM)
    server.wait(timeout=10)
    n = len(lat)
    print(f"\nHTTP: {n} per-node iPXE scripts, {args.clients} concurrent clients: {n / wall:.0f} scripts/s, "
          f"p50 {pct(lat, 0.5) * 1000:.1f} ms, p99 {pct(lat, 0.99) * 1000:.1f} ms, failures {failures[0]}")

    from provisioner.netboot.service import BootService

    svc = BootService(ctx.store, ctx.artifacts, "http://127.0.0.1:8080")
    svc.boot_config(macs[0], "ipxe")  # warm the release and template caches
    renders = []
    rnd = random.Random(1)
    for _ in range(args.renders):
        t = time.perf_counter()
        svc.boot_config(rnd.choice(macs), "ipxe")
        renders.append(time.perf_counter() - t)
    print(f"server-side render (gate + token + event + template), {args.renders} renders: "
          f"p50 {pct(renders, 0.5) * 1000:.2f} ms, p99 {pct(renders, 0.99) * 1000:.2f} ms")
    print("\n| measure | value | goal |\n|---|---|---|")
    print(f"| scripts/s, {args.clients} concurrent clients | {n / wall:.0f} | ≥ 1,000 |")
    print(f"| client latency p99 | {pct(lat, 0.99) * 1000:.1f} ms | – |")
    print(f"| render p99 (server side) | {pct(renders, 0.99) * 1000:.2f} ms | < 2 ms |")
    print(f"| failures | {failures[0]} | 0 |")
    os.system(f"rm -rf {work}")
    return 0 if failures[0] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
