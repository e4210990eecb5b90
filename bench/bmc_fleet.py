"""Benchmark: one client process drives a fleet of simulated BMCs over real IPMI on loopback.

Per BMC: log in, set a one-time PXE boot, power-cycle (read power, then cycle or power on), read the
firmware inventory, log out (bench/fleet_run.py, shared with redfish_fleet.py). The simulated BMCs
run in other process(es) (provisioner.lab.bmc); the client is IpmiDriver on a thread pool.
Reported: wall time, the client's CPU time (getrusage), the simulators' CPU time (/proc), errors.
Goal: 1,000 BMCs in under 5 s on 2 cores.

    .venv/bin/python bench/bmc_fleet.py [--sizes 100,500,1000] [--threads 50] [--shards 1] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import fleet_run  # noqa: E402  (bench/, the script's own folder: the loop shared with redfish_fleet.py)
from procstat import cpu_model  # noqa: E402

from provisioner.drivers.base import BmcEndpoint  # noqa: E402
from provisioner.drivers.ipmi import IpmiDriver  # noqa: E402
from provisioner.lab.bmc_process import SiteProcess, generate_nodes  # noqa: E402
from provisioner.lab.loopback import free_block  # noqa: E402


def driver(ep: BmcEndpoint) -> IpmiDriver:
    return IpmiDriver(ep, timeout=30)


def run(endpoints: list[BmcEndpoint], threads: int, sims: list[SiteProcess]) -> dict:
    return fleet_run.run(endpoints, threads, [s.proc.pid for s in sims], driver)


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
                rows.append((size, fleet_run.median([run(endpoints[:size], args.threads, sims)
                                                     for _ in range(args.runs)], f" at {size}")))
        finally:
            for s in sims:
                s.stop()
    load = os.getloadavg()
    print(f"\nMachine: {os.cpu_count()} CPUs (nproc), {cpu_model()}, Python {platform.python_version()}, "
          f"load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1/5/15 min)")
    print(f"Client: one process, {args.threads} threads, IpmiDriver; simulator: {args.shards} process(es); "
          f"per BMC: login, one-time PXE, power cycle, inventory, logout ({args.runs} runs, median)\n")
    print("| BMCs | wall (s) | range (s) | client CPU (s) | simulator CPU (s) | CPU per BMC (ms) | BMCs/s | errors |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for size, m in rows:
        print(f"| {size} | {m['wall']:.2f} | {m['range'][0]:.2f}-{m['range'][1]:.2f} | {m['client_cpu']:.2f} | "
              f"{m['sim_cpu']:.2f} | {fleet_run.cpu_per_bmc_ms(m, size)} | {size / m['wall']:.0f} | {m['errors']} |")
    return 1 if any(m["errors"] for _, m in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
