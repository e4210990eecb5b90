"""Benchmark: the store on PostgreSQL beside SQLite, in the same run.

    python bench/pg_scale.py [--plan-nodes 10000] [--rollback-nodes 1000]

1. plan (`pipeline.plan(refresh=False)`: nodes and their last observed firmware read from the
   store) and compliance over --plan-nodes nodes (goal: under 1 s each, on both stores);
2. with --rollback-nodes N > 0: the 1,000-node pipeline of bench/pipeline_scale.py (first
   re-provision, firmware release R2, rollback to R1) with one in-process engine, once per store
   (goal: the rollback on PostgreSQL within 1.2x of SQLite).
PostgreSQL is a throw-away cluster (initdb + pg_ctl on a free loopback port, as in the tests;
durability settings off for both: SQLite keeps synchronous=NORMAL, PostgreSQL fsync=off).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from helpers import PgCluster  # noqa: E402  (tests/helpers.py: the same throw-away cluster as the tests)
from pipeline_scale import bump_r650_bios, cpu_s, machine, phase  # noqa: E402
from procstat import tree_cpu_seconds  # noqa: E402

from provisioner import pipeline  # noqa: E402
from provisioner.context import Context, Settings  # noqa: E402
from provisioner.releases.build import freeze, import_artifacts  # noqa: E402
from provisioner.store.db import Database  # noqa: E402

# a 10,000-node inventory is 2.5 MB: past the spec loader's default per-file limit (1 MiB)
os.environ.setdefault("PROVISIONER_SPEC_MAX_FILE_BYTES", str(64 << 20))


def loadavg() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def release(ctx: Context, spec: Path, author: str) -> str:
    c = Context(Settings(spec_dir=spec, data_dir=ctx.settings.data_dir, db_url=ctx.settings.db_url, actor=author))
    rel = freeze(c.spec)
    import_artifacts(spec, rel, c.artifacts)
    c.store.add_release(rel, author)
    c.store.sync_nodes(c.spec)
    return rel.id


def server_cpu(cluster: PgCluster | None) -> float:
    """CPU seconds of the PostgreSQL server (postmaster and its backends) so far; 0 for SQLite (in process)."""
    if cluster is None:
        return 0.0
    return tree_cpu_seconds(int((cluster.data / "postmaster.pid").read_text().split()[0]))


def timed(fn, cluster):
    t0, c0, s0 = time.perf_counter(), cpu_s(), server_cpu(cluster)
    out = fn()
    return out, (time.perf_counter() - t0, cpu_s() - c0, server_cpu(cluster) - s0)


def bench_plan(n: int, url: str, work: Path, cluster: PgCluster | None) -> tuple[tuple, tuple]:
    spec = work / "spec"
    if not spec.exists():
        subprocess.run([sys.executable, str(ROOT / "scripts/make_big_spec.py"), str(n), str(spec),
                        "--per-rack", "40"], check=True)
    ctx = Context(Settings(spec_dir=spec, data_dir=work / "data", db_url=url, actor="bench"))
    rid = release(ctx, spec, "bench")
    ctx.store.point_environment("production", rid, "bench", "bench")
    pins = {m: {c["name"]: c["version"] for c in v["components"]}
            for m, v in ctx.store.get_release(rid).document["manifests"].items()}
    with ctx.store.db.write() as c:  # every third node runs an older NIC: a plan with changes
        from sqlalchemy import update

        from provisioner.store.models import NodeRow
        for i, r in enumerate(ctx.store.nodes()):
            c.execute(update(NodeRow).where(NodeRow.name == r.name).values(
                observed={**pins[r.model], **({"nic": "0.0.1"} if i % 3 == 0 else {})}))
    ctx.store.block("bios", "9.9.9", "bench", by="bench")
    fresh = Context(Settings(spec_dir=spec, data_dir=work / "data", db_url=url, actor="bench"))
    fresh.spec  # noqa: B018  (the spec is parsed before the clock starts: we time the store, not YAML)
    (plan, _), t_plan = timed(lambda: pipeline.plan(fresh, "production", refresh=False), cluster)
    rows, t_comp = timed(lambda: pipeline.compliance(fresh), cluster)
    assert len(plan.nodes) == n and len(rows) == n
    assert sum(not r["compliant"] for r in rows) == n, "never provisioned: no node is at its release yet"
    ctx.store.db.close()
    fresh.store.db.close()
    return t_plan, t_comp


def free_octet() -> int:
    from provisioner.lab.loopback import _free

    return next(n for n in random.sample(range(60, 250), 190) if _free(f"127.{n}.0.1", 6230))


def bench_rollback(n: int, url: str | None, work: Path) -> list:
    spec, spec2, data = work / "spec", work / "spec-r2", work / "data"
    subprocess.run([sys.executable, str(ROOT / "scripts/make_big_spec.py"), str(n), str(spec),
                    "--concurrency", "64"], check=True)
    # make_big_spec puts the BMCs on 127.20.x.y, as bench/pipeline_scale.py's run does: take a free block
    inv = spec / "inventory.yaml"
    inv.write_text(inv.read_text().replace("address: 127.20.", f"address: 127.{free_octet()}."))
    bump_r650_bios(spec, spec2)
    ctx = Context(Settings(spec_dir=spec, data_dir=data, db_url=url, actor="bench"))
    r1 = release(ctx, spec, "bench")
    ctx.store.point_environment("production", r1, "bench", "bench")
    cli = [sys.executable, "-m", "provisioner", "--spec", str(spec), "--data", str(data), *(["--db", url] if url else [])]
    subprocess.run(cli + ["lab", "up", "--timeout", "120"], check=True)
    results: list = []
    try:
        phase(ctx, f"1. re-provision {n} nodes", lambda: pipeline.apply(ctx, "production"), results)
        r2 = release(ctx, spec2, "bench")
        ctx.store.point_environment("production", r2, "bench", "bench: firmware release R2")
        phase(ctx, "2. firmware rollout R2", lambda: pipeline.apply(ctx, "production"), results)
        phase(ctx, "3. rollback to R1", lambda: pipeline.rollback(ctx, "production", to=r1), results)
    finally:
        subprocess.run(cli + ["lab", "down"], check=False)
        ctx.store.db.close()
    return results


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--plan-nodes", type=int, default=10000, help="0 skips plan and compliance")
    ap.add_argument("--rollback-nodes", type=int, default=1000, help="0 skips the pipeline runs")
    args = ap.parse_args()
    print(f"machine: {machine()}; load average at start {loadavg()}")
    work = Path(tempfile.mkdtemp(prefix="provisioner-pgbench-"))
    cluster = PgCluster()
    rows = []
    try:
        for name in ("sqlite", "postgresql") if args.plan_nodes else ():
            url = f"sqlite:///{work / 'plan-sqlite.db'}" if name == "sqlite" else cluster.create_database("plan")
            if name == "postgresql":
                Database(url, upgrade=True).close()
            t_plan, t_comp = bench_plan(args.plan_nodes, url, work / "plan", cluster if name == "postgresql" else None)
            for what, (wall, cpu, server) in ((f"plan, {args.plan_nodes} nodes from the store", t_plan),
                                              (f"compliance, {args.plan_nodes} nodes", t_comp)):
                print(f"{name}: {what}: {wall:.3f} s wall, CPU {cpu:.3f} s here + {server:.3f} s in PostgreSQL "
                      f"(load average {loadavg()})")
                rows.append((what, name, wall))
        if args.rollback_nodes:
            for name in ("sqlite", "postgresql"):
                url = None if name == "sqlite" else cluster.create_database("pipeline")
                if url:
                    Database(url, upgrade=True).close()
                print(f"\n== {name}: {args.rollback_nodes}-node pipeline (load average {loadavg()})")
                for phase_name, wall, cpu, lab, _done, failed in bench_rollback(args.rollback_nodes, url,
                                                                               work / f"pipe-{name}"):
                    rows.append((f"{phase_name} (engine CPU {cpu:.1f} s, lab CPU {lab:.1f} s, failed {failed})",
                                 name, wall))
    finally:
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nload average at the end {loadavg()}\n\n| what | SQLite (s) | PostgreSQL (s) | PG ÷ SQLite |\n|---|---|---|---|")
    by = {}
    for what, name, t in rows:
        by.setdefault(what.split(" (")[0], {})[name] = t
    for what, t in by.items():
        if "sqlite" in t and "postgresql" in t:
            print(f"| {what} | {t['sqlite']:.3f} | {t['postgresql']:.3f} | {t['postgresql'] / t['sqlite']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
