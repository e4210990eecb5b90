"""Benchmark: one client process drives a fleet of simulated Redfish BMCs, then the same number of
IPMI BMCs, in the same run.

Per BMC: log in (session), set a one-time PXE boot (UEFI), power-cycle (read power, then restart or
power on, then read it back), read the firmware inventory, log out (bench/fleet_run.py). The Redfish BMCs run in another
process (provisioner.lab.bmc --redfish: HTTPS on one loopback address each, provisioner.lab.redfish_conn);
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
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bmc_fleet  # noqa: E402  (bench/, the IPMI half)
import fleet_run  # noqa: E402  (the loop both halves share)
from procstat import cpu_model  # noqa: E402

from provisioner.drivers.base import BmcEndpoint  # noqa: E402
from provisioner.drivers.redfish import RedfishDriver  # noqa: E402
from provisioner.lab.bmc_process import SiteProcess, generate_nodes  # noqa: E402
from provisioner.lab.loopback import free_block  # noqa: E402


def run(endpoints: list[BmcEndpoint], threads: int, sim: SiteProcess, ca: str) -> dict:
    return fleet_run.run(endpoints, threads, [sim.proc.pid],
                         lambda ep: RedfishDriver(ep, timeout=30, ca_bundle=ca))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=1000)
    p.add_argument("--threads", type=int, default=8, help="Redfish client threads")
    p.add_argument("--ipmi-threads", type=int, default=50, help="IPMI client threads (bench/bmc_fleet.py's)")
    p.add_argument("--runs", type=int, default=1, help="runs per protocol; the median is reported")
    p.add_argument("--no-ipmi", action="store_true", help="skip the IPMI half")
    args = p.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory(prefix="redfish-fleet-") as tmp:
        base, port = free_block(args.size, port=8443)
        nodes = generate_nodes(args.size, base=base, port=port, prefix="rf")
        sim = SiteProcess(nodes, state_path=Path(tmp) / "redfish-state.json",
                          extra_args=("--redfish", tmp)).start(timeout=180)
        ca = str(Path(tmp) / "redfish-ca.pem")
        try:
            eps = [BmcEndpoint(n["bmc_address"], n["bmc_port"], n["username"], n["password"], "redfish")
                   for n in nodes]
            run(eps[:10], args.threads, sim, ca)  # warm-up: imports, the thread pool, the TLS context
            rows["redfish"] = fleet_run.median([run(eps, args.threads, sim, ca) for _ in range(args.runs)])
        finally:
            sim.stop()
        if not args.no_ipmi:
            base, port = free_block(args.size)
            nodes = generate_nodes(args.size, base=base, port=port)
            sims = [SiteProcess(nodes, state_path=Path(tmp) / "bmc-state.json").start(timeout=180)]
            try:
                eps = [BmcEndpoint(n["bmc_address"], n["bmc_port"], n["username"], n["password"]) for n in nodes]
                bmc_fleet.run(eps[:10], args.ipmi_threads, sims)
                rows["ipmi"] = fleet_run.median([bmc_fleet.run(eps, args.ipmi_threads, sims)
                                                 for _ in range(args.runs)])
            finally:
                sims[0].stop()
    load = os.getloadavg()
    print(f"\nMachine: {os.cpu_count()} CPUs (nproc), {cpu_model()}, Python {platform.python_version()}, "
          f"load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1/5/15 min)")
    print(f"Client: one process, {args.threads} threads (Redfish) / {args.ipmi_threads} (IPMI); simulator: one "
          f"process; {args.size} BMCs; per BMC: "
          f"login, one-time PXE, power cycle, inventory, logout ({args.runs} run(s), median)\n")
    print("| protocol | BMCs | wall (s) | client CPU (s) | simulator CPU (s) | CPU per BMC (ms) | BMCs/s | errors |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for proto, m in rows.items():
        print(f"| {proto} | {args.size} | {m['wall']:.2f} | {m['client_cpu']:.2f} | {m['sim_cpu']:.2f} | "
              f"{fleet_run.cpu_per_bmc_ms(m, args.size)} | {args.size / m['wall']:.0f} | {m['errors']} |")
    if "ipmi" in rows:
        print(f"\nRedfish / IPMI wall time: {rows['redfish']['wall'] / rows['ipmi']['wall']:.2f}x")
    for proto, m in rows.items():
        print(f"{proto}: client CPU in the kernel {m['client_sys']:.2f} s")
    return 1 if any(m["errors"] for m in rows.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
