"""Benchmark: one client process drives a fleet of simulated Redfish BMCs, then the same number of
IPMI BMCs, in the same run.

Per BMC: log in (session), set a one-time PXE boot (UEFI), power-cycle (read power, then restart or
power on, then read it back), read the firmware inventory, log out. The Redfish BMCs run in another
process (provisioner.lab.bmc --redfish: HTTPS on one loopback address each, one cheroot server);
the client is RedfishDriver on a thread pool, trusting the lab CA. The IPMI half is
bench/bmc_fleet.py's. Goals: 1,000 Redfish BMCs in under 10 s on 2 cores, and within 3x of IPMI.

    .venv/bin/python bench/redfish_fleet.py [--size 1000] [--threads 8] [--ipmi-threads 50] [--runs 1] [--no-ipmi]

Thread counts: each protocol with the client threads it does best with on 2 cores. Redfish is
CPU-bound on both ends (TLS, HTTP parsing in Python): 4-8 client threads beat 50 by 30-40 % in
client and simulator CPU alike (GIL hand-offs); IPMI keeps bench/bmc_fleet.py's 50.
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
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bmc_fleet  # noqa: E402  (bench/, the IPMI half)
from procstat import cpu_model, cpu_seconds  # noqa: E402

from provisioner.drivers.base import BmcEndpoint  # noqa: E402
from provisioner.drivers.redfish import RedfishDriver  # noqa: E402
from provisioner.errors import DriverError  # noqa: E402
from provisioner.lab.bmc_process import SiteProcess, generate_nodes  # noqa: E402
from provisioner.lab.loopback import free_block  # noqa: E402


def provision(ep: BmcEndpoint, ca: str) -> str | None:
    d = RedfishDriver(ep, timeout=30, ca_bundle=ca)
    try:
        d.set_one_time_boot("pxe", mode="uefi")
        d.power_cycle()
        inventory = d.firmware_inventory()
        return None if len(inventory) == 4 else f"{ep.key}: inventory {inventory}"
    except DriverError as e:
        return f"{type(e).__name__}: {e}"
    finally:
        d.close()


def run(endpoints: list[BmcEndpoint], threads: int, sim: SiteProcess, ca: str) -> dict:
    sim0 = cpu_seconds(sim.proc.pid)
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        errors = [e for e in pool.map(lambda ep: provision(ep, ca), endpoints) if e]
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    return {"wall": wall, "client_cpu": (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime),
            "sim_cpu": cpu_seconds(sim.proc.pid) - sim0, "errors": errors}


def median(results: list[dict]) -> dict:
    out = {k: statistics.median(r[k] for r in results) for k in ("wall", "client_cpu", "sim_cpu")}
    out["errors"] = sum(len(r["errors"]) for r in results)
    for r in results:
        for e in r["errors"][:3]:
            print(f"  error: {e}", file=sys.stderr)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=1000)
    p.add_argument("--threads", type=int, default=8, help="Redfish client threads")
    p.add_argument("--ipmi-threads", type=int, default=50, help="IPMI client threads (bench/bmc_fleet.py's)")
    p.add_argument("--runs", type=int, default=1, help="runs per protocol; the median is reported")
    p.add_argument("--sim-threads", type=int, default=8, help="HTTP worker threads of the Redfish simulator")
    p.add_argument("--no-ipmi", action="store_true", help="skip the IPMI half")
    args = p.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory(prefix="redfish-fleet-") as tmp:
        base, port = free_block(args.size, port=8443)
        nodes = generate_nodes(args.size, base=base, port=port, prefix="rf")
        sim = SiteProcess(nodes, state_path=Path(tmp) / "redfish-state.json",
                          extra_args=("--redfish", tmp, "--threads", str(args.sim_threads))).start(timeout=180)
        ca = str(Path(tmp) / "redfish-ca.pem")
        try:
            eps = [BmcEndpoint(n["bmc_address"], n["bmc_port"], n["username"], n["password"], "redfish")
                   for n in nodes]
            run(eps[:10], args.threads, sim, ca)  # warm-up: imports, the thread pool, the TLS context
            rows["redfish"] = median([run(eps, args.threads, sim, ca) for _ in range(args.runs)])
        finally:
            sim.stop()
        if not args.no_ipmi:
            base, port = free_block(args.size)
            nodes = generate_nodes(args.size, base=base, port=port)
            sims = [SiteProcess(nodes, state_path=Path(tmp) / "bmc-state.json").start(timeout=180)]
            try:
                eps = [BmcEndpoint(n["bmc_address"], n["bmc_port"], n["username"], n["password"]) for n in nodes]
                bmc_fleet.run(eps[:10], args.ipmi_threads, sims)
                rows["ipmi"] = median([bmc_fleet.run(eps, args.ipmi_threads, sims) for _ in range(args.runs)])
            finally:
                sims[0].stop()
    load = os.getloadavg()
    print(f"\nMachine: {os.cpu_count()} CPUs (nproc), {cpu_model()}, Python {platform.python_version()}, "
          f"load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1/5/15 min)")
    print(f"Client: one process, {args.threads} threads (Redfish) / {args.ipmi_threads} (IPMI); simulator: one "
          f"process; {args.size} BMCs; per BMC: "
          f"login, one-time PXE, power cycle, inventory, logout ({args.runs} run(s), median)\n")
    print("| protocol | BMCs | wall (s) | client CPU (s) | simulator CPU (s) | BMCs/s | errors |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for proto, m in rows.items():
        print(f"| {proto} | {args.size} | {m['wall']:.2f} | {m['client_cpu']:.2f} | {m['sim_cpu']:.2f} | "
              f"{args.size / m['wall']:.0f} | {m['errors']} |")
    if "ipmi" in rows:
        print(f"\nRedfish / IPMI wall time: {rows['redfish']['wall'] / rows['ipmi']['wall']:.2f}x")
    return 1 if any(m["errors"] for m in rows.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
