"""The loop bench/bmc_fleet.py and bench/redfish_fleet.py share: provision every BMC of a fleet from
a thread pool in this process, and measure it.

Per BMC: log in, set a one-time PXE boot (UEFI), power-cycle, read the firmware inventory (which
must list 4 components), log out. Measured: wall time, this process's CPU (getrusage, user and
system), the simulator processes' CPU (/proc), and the errors, one line each.
"""

from __future__ import annotations

import resource
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from procstat import cpu_seconds

from provisioner.drivers.base import BmcDriver, BmcEndpoint
from provisioner.errors import DriverError


def provision(driver: BmcDriver) -> str | None:
    try:
        driver.set_one_time_boot("pxe", mode="uefi")
        driver.power_cycle()
        inventory = driver.firmware_inventory()
        return None if len(inventory) == 4 else f"{driver.endpoint.key}: inventory {inventory}"
    except DriverError as e:
        return f"{type(e).__name__}: {e}"
    finally:
        driver.close()


def run(endpoints: list[BmcEndpoint], threads: int, sim_pids: list[int],
        make_driver: Callable[[BmcEndpoint], BmcDriver]) -> dict:
    sim0 = sum(cpu_seconds(p) for p in sim_pids)
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        errors = [e for e in pool.map(lambda ep: provision(make_driver(ep)), endpoints) if e]
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    user, system = r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime
    return {"wall": wall, "client_cpu": user + system, "client_sys": system,
            "sim_cpu": sum(cpu_seconds(p) for p in sim_pids) - sim0, "errors": errors}


def median(results: list[dict], label: str = "") -> dict:
    """The median of each figure over runs; the errors of all runs (the first 3 of each printed)."""
    out = {k: statistics.median(r[k] for r in results) for k in ("wall", "client_cpu", "client_sys", "sim_cpu")}
    out["errors"] = sum(len(r["errors"]) for r in results)
    walls = sorted(r["wall"] for r in results)
    out["range"] = (walls[0], walls[-1])
    for r in results:
        for e in r["errors"][:3]:
            print(f"  error{label}: {e}", file=sys.stderr)
    return out


def cpu_per_bmc_ms(m: dict, size: int) -> str:
    """Client + simulator CPU per BMC, in ms: the figure that does not move with the machine's load."""
    return f"{1000 * (m['client_cpu'] + m['sim_cpu']) / size:.1f}"
