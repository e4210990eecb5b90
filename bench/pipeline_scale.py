"""Benchmark: re-provision and roll back N simulated nodes over real IPMI and real netboot.

    python bench/pipeline_scale.py [--nodes 1000] [--plan-nodes 10000]

The simulated site (N BMCs on loopback, their hosts, and the TFTP+HTTP boot services) runs in
one process started by `provisioner lab up`; the rollout engine runs in this one. Phases:
  1. first re-provision of every node (factory firmware -> R1, flash + install)
  2. a firmware release R2 (r650 BIOS 1.13.2 -> 1.14.0 in-band, dl360g10 BIOS 2.80.0 -> 2.90.0 over HPM.1)
  3. rollback to R1 (the goal: under 120 s for 1,000 nodes; the aim under 60 s)
Then plan and compliance over --plan-nodes nodes (goal: under 1 s each).
Prints per-phase wall time, CPU of this process, and the per-step breakdown from the rollout record.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from procstat import cpu_model, cpu_seconds  # noqa: E402  (bench/, the script's own folder)

from provisioner import pipeline  # noqa: E402
from provisioner.context import Context, Settings  # noqa: E402
from provisioner.demo import bump_bios  # noqa: E402
from provisioner.releases.build import freeze, import_artifacts  # noqa: E402
from provisioner.rollout.record import RolloutRecord  # noqa: E402


def machine() -> str:
    return f"{os.cpu_count()} cores, {cpu_model()}, Python {platform.python_version()}"


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def lab_cpu_s(data: Path) -> float:
    """CPU seconds of the lab process so far (it shares the machine's cores with the engine)."""
    import json

    try:
        return cpu_seconds(json.loads((data / "lab" / "lab.json").read_text())["pid"])
    except (OSError, ValueError, KeyError, IndexError):
        return float("nan")


def release(ctx: Context, spec: Path, author: str) -> str:
    c = Context(Settings(spec_dir=spec, data_dir=ctx.settings.data_dir, actor=author))
    rel = freeze(c.spec)
    import_artifacts(spec, rel, c.artifacts)
    c.store.add_release(rel, author)
    c.store.sync_nodes(c.spec)
    return rel.id


def bump_r650_bios(src: Path, dest: Path) -> None:
    """R2: dl360g10 BIOS 2.90.0 (bump_bios) and r650 BIOS 1.14.0 too."""
    import hashlib

    bump_bios(src, dest)
    m = dest / "firmware_manifests/r650.yaml"
    text = m.read_text()
    img = "artifacts/firmware/r650/bios-1.14.0.bin"
    data = (dest / img).read_bytes()
    block = re.search(r"  - name: bios\n(?:    .*\n)+", text).group(0)
    new = re.sub(r'version: "[^"]+"', 'version: "1.14.0"', block)
    new = re.sub(r"file: .*", f"file: {img}", new)
    new = re.sub(r"sha256: .*", f"sha256: {hashlib.sha256(data).hexdigest()}", new)
    m.write_text(text.replace(block, new))


def phase(ctx: Context, name: str, fn, results: list) -> None:
    t0, c0, l0 = time.monotonic(), cpu_s(), lab_cpu_s(ctx.settings.data_dir)
    res = fn()
    wall, cpu = time.monotonic() - t0, cpu_s() - c0
    lab = lab_cpu_s(ctx.settings.data_dir) - l0
    steps = RolloutRecord(ctx.store).steps(res.rollout_id)
    begun = {}
    per_step: dict[str, list[float]] = {}
    for s in steps:
        key = (s["node"], s["step"])
        if s["phase"] == "begin":
            begun[key] = s["at"]
        elif key in begun:
            per_step.setdefault(s["step"], []).append((s["at"] - begun.pop(key)).total_seconds())
    print(f"\n{name}: {res.status} — {len(res.done)} done, {len(res.failed)} failed in {wall:.1f} s "
          f"(engine CPU {cpu:.1f} s, lab CPU {lab:.1f} s)")
    for step, d in per_step.items():
        d.sort()
        print(f"   {step:13s} n={len(d):5d}  mean {statistics.mean(d) * 1000:7.1f} ms  "
              f"p95 {d[int(len(d) * 0.95) - 1] * 1000:7.1f} ms  sum {sum(d):7.1f} s")
    results.append((name, wall, cpu, lab, len(res.done), len(res.failed)))
    if res.failed:
        print("   failures:", list(res.failed.items())[:5])


def bench_plan(n: int) -> tuple[float, float]:
    from provisioner.netboot.gate import Blocked
    from provisioner.plan import Observed, make_plan
    from provisioner.releases.view import ReleaseView
    from provisioner.spec.files import SpecLimits
    from provisioner.spec.loader import load_spec

    with tempfile.TemporaryDirectory() as d:
        subprocess.run([sys.executable, str(ROOT / "scripts/make_big_spec.py"), str(n), f"{d}/spec",
                        "--per-rack", "40"], check=True)
        spec = load_spec(f"{d}/spec", SpecLimits(max_file_bytes=64 << 20))  # 10,000 nodes: a 2.5 MB inventory
        rel = freeze(spec)
        doc = rel.document
        pins = {m: {c["name"]: c["version"] for c in v["components"]} for m, v in doc["manifests"].items()}
        observed = [Observed(nd.name, rack, nd.model, nd.environment,
                             {**pins[nd.model], **({"nic": "0.0.1"} if i % 3 == 0 else {})}, rel.id)
                    for i, (rack, nd) in enumerate(spec.nodes())]
        blocked = [Blocked("bios", "9.9.9", "bench")]
        t0 = time.perf_counter()  # from the stored document: the typed view is part of planning
        plan = make_plan(ReleaseView.of(rel), "production", observed, blocked)
        t_plan = time.perf_counter() - t0
        ctx = Context(Settings(spec_dir=Path(f"{d}/spec"), data_dir=Path(d) / "data"))
        ctx.store.add_release(rel, "bench")
        ctx.store.sync_nodes(spec)
        ctx.store.point_environment("production", rel.id, "bench", "bench")
        with ctx.store.db.session() as s:
            from provisioner.store.models import NodeRow
            for o in observed:
                s.get(NodeRow, o.name).observed = o.firmware
        t0 = time.perf_counter()
        rows = pipeline.compliance(ctx)
        t_comp = time.perf_counter() - t0
        assert len(plan.nodes) == n and len(rows) == n
        print(f"\nplan over {n} nodes: {t_plan * 1000:.0f} ms ({len(plan.changes)} changes); "
              f"compliance over {n} nodes from the store: {t_comp * 1000:.0f} ms")
        return t_plan, t_comp


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--plan-nodes", type=int, default=10000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--fleet", choices=("mixed", "ipmi"), default="mixed",
                    help="mixed (the example's Redfish dl360g10s) or every BMC on IPMI (side by side with older commits)")
    args = ap.parse_args()
    print(f"machine: {machine()}; fleet: {args.fleet}")
    work = Path(tempfile.mkdtemp(prefix="provisioner-bench-"))
    spec, spec2, data = work / "spec", work / "spec-r2", work / "data"
    subprocess.run([sys.executable, str(ROOT / "scripts/make_big_spec.py"), str(args.nodes), str(spec),
                    "--concurrency", str(args.concurrency), "--fleet", args.fleet], check=True)
    bump_r650_bios(spec, spec2)
    ctx = Context(Settings(spec_dir=spec, data_dir=data, actor="bench"))
    r1 = release(ctx, spec, "bench")
    ctx.store.point_environment("production", r1, "bench", "bench")
    cli = [sys.executable, "-m", "provisioner", "--spec", str(spec), "--data", str(data)]
    t0 = time.monotonic()
    subprocess.run(cli + ["lab", "up", "--timeout", "120"], check=True)
    print(f"lab up: {args.nodes} BMCs answering in {time.monotonic() - t0:.1f} s")
    results: list = []
    try:
        phase(ctx, f"1. re-provision {args.nodes} nodes (flash + install)",
              lambda: pipeline.apply(ctx, "production"), results)
        r2 = release(ctx, spec2, "bench")
        ctx.store.point_environment("production", r2, "bench", "bench: firmware release R2")
        phase(ctx, "2. firmware rollout R2 (BIOS in-band and over HPM.1)",
              lambda: pipeline.apply(ctx, "production"), results)
        phase(ctx, "3. rollback to R1", lambda: pipeline.rollback(ctx, "production", to=r1), results)
    finally:
        subprocess.run(cli + ["lab", "down"], check=False)
    t_plan, t_comp = bench_plan(args.plan_nodes)
    print("\n| phase | nodes | wall (s) | engine CPU (s) | lab CPU (s) | failed |\n|---|---|---|---|---|---|")
    for name, wall, cpu, lab, done, failed in results:
        print(f"| {name} | {done + failed} | {wall:.1f} | {cpu:.1f} | {lab:.1f} | {failed} |")
    print(f"| plan, {args.plan_nodes} nodes (pure) | {args.plan_nodes} | {t_plan:.3f} | – | – | – |")
    print(f"| compliance, {args.plan_nodes} nodes (store) | {args.plan_nodes} | {t_comp:.3f} | – | – | – |")
    shutil.rmtree(work, ignore_errors=True)
    return 0 if all(r[-1] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
