"""Benchmark: one client process drives a fleet of simulated BMCs over real IPMI on loopback.

Per BMC: log in, set a one-time PXE boot, power-cycle (read power, then cycle or power on), read the
firmware inventory, log out. The simulated BMCs run in other process(es) (provisioner.lab.bmc);
the client is IpmiDriver on a thread pool. Reported: wall time, the client's CPU time (getrusage),
the simulators' CPU time (/proc), errors. Goal: 1,000 BMCs in under 5 s on 2 cores.

    .venv/bin/python bench/bmc_fleet.py [--sizes 100,500,1000] [--threads 50] [--shards 1] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from procstat import cpu_model, cpu_seconds  # noqa: E402  (bench/, the script's own folder)

from provisioner.drivers.base import BmcEndpoint  # noqa: E402
from provisioner.drivers.ipmi import IpmiDriver  # noqa: E402
from provisioner.errors import DriverError  # noqa: E402
from provisioner.lab.bmc_process import SiteProcess, generate_nodes  # noqa: E402
from provisioner.lab.loopback import free_block  # noqa: E402


def provision(ep: BmcEndpoint) -> str | None:
    d = IpmiDriver(ep, timeout=30)
    try:
        d.set_one_time_boot("pxe", mode="bios")
        d.power_cycle()
        inventory = d.firmware_inventory()
        return None if len(inventory) == 4 else f"{ep.key}: inventory {inventory}"
    except DriverError as e:
        return f"{type(e).__name__}: {e}"
    finally:
        d.close()


def run(endpoints: list[BmcEndpoint], threads: int, sims: list[SiteProcess]) -> dict:
    sim0 = sum(cpu_seconds(s.proc.pid) for s in sims)
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        errors = [e for e in pool.map(provision, endpoints) if e]
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    return {"wall": wall, "client_cpu": (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime),
            "sim_cpu": sum(cpu_seconds(s.proc.pid) for s in sims) - sim0, "errors": errors}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="100,500,1000")
    p.add_argument("--threads", type=int, default=50)
    p.add_argument("--shards", type=int, default=1, help="simulator processes")
    p.add_argument("--runs", type=int, default=3, help="runs per size; the median is reported")
    args = p.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    biggest = max(sizes)
    base, port = free_block(biggest)
    nodes = generate_nodes(biggest, base=base, port=port)
    with tempfile.TemporaryDirectory(prefix="bmc-fleet-") as tmp:
        per = -(-biggest // args.shards)
        sims = [SiteProcess(nodes[i:i + per], state_path=Path(tmp) / f"bmc-state-{i // per}.json")
                for i in range(0, biggest, per)]
        for s in sims:
            s.start(timeout=120)
        try:
            endpoints = [BmcEndpoint(n["bmc_address"], n["bmc_port"], n["username"], n["password"])
                         for n in nodes]
            run(endpoints[:10], args.threads, sims)  # warm-up: imports, thread pool, first sockets
            rows = []
            for size in sizes:
                results = [run(endpoints[:size], args.threads, sims) for _ in range(args.runs)]
                med = {k: statistics.median(r[k] for r in results) for k in ("wall", "client_cpu", "sim_cpu")}
                errors = sum(len(r["errors"]) for r in results)
                walls = sorted(r["wall"] for r in results)
                rows.append((size, med, errors, walls))
                for r in results:
                    for e in r["errors"][:3]:
                        print(f"  error at {size}: {e}", file=sys.stderr)
        finally:
            for s in sims:
                s.stop()
    load = os.getloadavg()
    print(f"\nMachine: {os.cpu_count()} CPUs (nproc), {cpu_model()}, Python {platform.python_version()}, "
          f"load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1/5/15 min)")
    print(f"Client: one process, {args.threads} threads, IpmiDriver; simulator: {args.shards} process(es); "
          f"per BMC: login, one-time PXE, power cycle, inventory, logout ({args.runs} runs, median)\n")
    print("| BMCs | wall (s) | range (s) | client CPU (s) | simulator CPU (s) | BMCs/s | errors |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for size, med, errors, walls in rows:
        print(f"| {size} | {med['wall']:.2f} | {walls[0]:.2f}-{walls[-1]:.2f} | {med['client_cpu']:.2f} | "
              f"{med['sim_cpu']:.2f} | {size / med['wall']:.0f} | {errors} |")
    return 1 if any(errors for _, _, errors, _ in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
