"""Benchmark: the rollback on PostgreSQL run by 1, 2 and 3 `provisioner worker` processes, beside
the in-process engine on SQLite, in the same run.

    python bench/pg_rollback.py [--nodes 1000]

Per store, the pipeline of bench/pipeline_scale.py sets the fleet up (first re-provision, firmware
release R2, both run in this process, not measured), then:
  SQLite      rollback to R1, the engine in this process (the embedded default);
  PostgreSQL  with k = 1, 2, 3 workers alive: a rollback (to R1, then back to R2, then to R1 again),
              `apply` handing it to the workers and following it.
Reported per rollback: wall time, CPU per node of the engine (this process on SQLite; the workers'
processes on PostgreSQL, plus this process following), and of the PostgreSQL server. Goal: one
worker on PostgreSQL within 1.2x of SQLite's wall time.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from helpers import PgCluster  # noqa: E402
from pg_scale import free_octet, loadavg, release, server_cpu  # noqa: E402
from pipeline_scale import bump_r650_bios, cpu_s, machine  # noqa: E402
from procstat import tree_cpu_seconds  # noqa: E402
from sqlalchemy import select  # noqa: E402

from provisioner import pipeline  # noqa: E402
from provisioner.context import Context, Settings  # noqa: E402
from provisioner.rollout.worker import live_workers  # noqa: E402
from provisioner.store.db import Database  # noqa: E402


def fleet(n: int, url: str | None, work: Path):
    """A fleet of n lab nodes at R2, with R1 the release to roll back to: (ctx, cli, r1, r2)."""
    spec, spec2, data = work / "spec", work / "spec-r2", work / "data"
    subprocess.run([sys.executable, str(ROOT / "scripts/make_big_spec.py"), str(n), str(spec),
                    "--concurrency", "64"], check=True)
    inv = spec / "inventory.yaml"
    inv.write_text(inv.read_text().replace("address: 127.20.", f"address: 127.{free_octet()}."))
    bump_r650_bios(spec, spec2)
    ctx = Context(Settings(spec_dir=spec, data_dir=data, db_url=url, actor="bench"))
    r1 = release(ctx, spec, "bench")
    ctx.store.point_environment("production", r1, "bench", "bench")
    cli = [sys.executable, "-m", "provisioner", "--spec", str(spec), "--data", str(data), *(["--db", url] if url else [])]
    subprocess.run(cli + ["lab", "up", "--timeout", "300"], check=True)
    try:
        first = pipeline.apply(ctx, "production")
        r2 = release(ctx, spec2, "bench")
        ctx.store.point_environment("production", r2, "bench", "bench: firmware release R2")
        second = pipeline.apply(ctx, "production")
    except BaseException:  # a set-up that fails leaves no lab behind
        subprocess.run(cli + ["lab", "down"], check=False)
        raise
    print(f"  set-up: re-provision {first.status} ({len(first.failed)} failed), R2 {second.status} "
          f"({len(second.failed)} failed); load average {loadavg()}", flush=True)
    return ctx, cli, r1, r2


def pg_counters(ctx) -> tuple[int, int]:
    """(sessions opened, transactions committed) on the store's database so far; (0, 0) on SQLite."""
    if ctx.store.db.engine.dialect.name != "postgresql":
        return 0, 0
    from sqlalchemy import text

    with ctx.store.db.read() as c:
        c.execute(text("SELECT pg_stat_clear_snapshot()"))
        return tuple(c.execute(text("SELECT sessions, xact_commit FROM pg_stat_database "
                                    "WHERE datname = current_database()")).one())


def live_leases(ctx) -> int:
    """Node and BMC leases live now: a rollout about to start should find none (they would hold its nodes up)."""
    from provisioner.rollout.claims import _live
    from provisioner.store.models import LeaseRow

    with ctx.store.db.read() as c:
        keys = [k for k in c.execute(select(LeaseRow.key)).scalars() if k.startswith(("node:", "bmc:"))]
        return len(_live(c, keys, ""))


def measure(ctx, n: int, to: str, workers: list[subprocess.Popen], cluster) -> dict:
    leases = live_leases(ctx)
    w0 = sum(tree_cpu_seconds(p.pid) for p in workers)
    (sess0, tx0), load0 = pg_counters(ctx), loadavg()
    t0, c0, s0 = time.perf_counter(), cpu_s(), server_cpu(cluster)
    res = pipeline.rollback(ctx, "production", to=to)
    wall, here = time.perf_counter() - t0, cpu_s() - c0
    engine = sum(tree_cpu_seconds(p.pid) for p in workers) - w0
    server = server_cpu(cluster) - s0
    sess1, tx1 = pg_counters(ctx)
    return {"status": res.status, "done": len(res.done), "failed": len(res.failed), "wall": wall,
            "engine_ms": 1000 * (engine + here) / n, "here_ms": 1000 * here / n, "server_ms": 1000 * server / n,
            "sessions_per_node": (sess1 - sess0) / n, "tx_per_node": (tx1 - tx0) / n,
            "leases_at_start": leases, "load": f"{load0} → {loadavg()}"}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--workers", default="1,2,3", help="worker counts to measure on PostgreSQL, in order")
    ap.add_argument("--no-sqlite", action="store_true", help="PostgreSQL only (to look into the workers; "
                    "the figures to report come from a run with both)")
    args = ap.parse_args()
    counts = [int(k) for k in args.workers.split(",")]
    print(f"machine: {machine()}; load average at start {loadavg()}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="provisioner-pgrollback-"))
    cluster = PgCluster()
    rows = []
    try:
        if not args.no_sqlite:
            print(f"\n== sqlite: {args.nodes} nodes, the engine in this process", flush=True)
            ctx, cli, r1, _ = fleet(args.nodes, None, work / "sqlite")
            try:
                rows.append(("SQLite, in-process engine", measure(ctx, args.nodes, r1, [], None)))
                print(f"  {rows[-1]}", flush=True)
            finally:
                subprocess.run(cli + ["lab", "down"], check=False)
                ctx.store.db.close()
        url = cluster.create_database("rollback")
        Database(url, upgrade=True).close()
        print(f"\n== postgresql: {args.nodes} nodes, {'/'.join(map(str, counts))} worker(s)", flush=True)
        ctx, cli, r1, r2 = fleet(args.nodes, url, work / "pg")
        env = {**os.environ, "PROVISIONER_DB": url}
        workers: list[subprocess.Popen] = []
        target = r1
        try:
            for k in counts:
                while len(workers) < k:
                    with open(work / f"worker-{len(workers) + 1}.log", "w") as out:  # kept if the run fails
                        workers.append(subprocess.Popen(cli + ["worker", "--slots", "64", "-v"], env=env,
                                                        stdout=out, stderr=subprocess.STDOUT))
                while len(live_workers(ctx.store)) < k:
                    time.sleep(0.2)
                rows.append((f"PostgreSQL, {k} worker(s)", measure(ctx, args.nodes, target, workers, cluster)))
                print(f"  {rows[-1]}", flush=True)
                target = r2 if target == r1 else r1
        finally:
            for p in workers:
                p.terminate()
            for p in workers:
                p.wait(60)
            subprocess.run(cli + ["lab", "down"], check=False)
            ctx.store.db.close()
    finally:
        cluster.stop()
        shutil.rmtree(work / "sqlite", ignore_errors=True)
        shutil.rmtree(work / "pg", ignore_errors=True)
        print(f"worker logs: {work}")
    base = rows[0][1]["wall"]  # SQLite's (the first PostgreSQL row's with --no-sqlite)
    print(f"\nload average at the end {loadavg()}\n\n| {args.nodes}-node rollback | status | wall (s) | ÷ SQLite | "
          "engine CPU / node (ms) | of which apply following | PostgreSQL CPU / node (ms) | "
          "PG transactions / sessions per node | leases live at start | load average (start → end) |\n"
          "|---|---|---|---|---|---|---|---|---|---|")
    for what, r in rows:
        print(f"| {what} | {r['status']} ({r['failed']} failed) | {r['wall']:.1f} | {r['wall'] / base:.2f} | "
              f"{r['engine_ms']:.1f} | {r['here_ms']:.1f} | {r['server_ms']:.1f} | "
              f"{r['tx_per_node']:.1f} / {r['sessions_per_node']:.2f} | {r['leases_at_start']} | {r['load']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
