"""Many BMCs at once from one process: the hangs pyghmi had at 500 BMCs (research note §3, §6) stay gone."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from provisioner.drivers.base import BmcEndpoint
from provisioner.drivers.ipmi import IpmiDriver
from provisioner.errors import DriverError
from provisioner.lab.bmc_process import SiteProcess, generate_nodes
from provisioner.lab.loopback import free_block

BMCS, ROUNDS, THREADS = 500, 20, 50


def provision(ep: BmcEndpoint) -> str | None:
    d = IpmiDriver(ep, timeout=20)
    try:
        d.set_one_time_boot("pxe", mode="bios")
        d.power_cycle()
        if len(d.firmware_inventory()) != 4:
            return f"{ep.key}: incomplete inventory"
        return None
    except DriverError as e:
        return f"{type(e).__name__}: {e}"
    finally:
        d.close()


@pytest.mark.timeout(240)
def test_500_bmcs_driven_at_once_20_times_with_no_hang_and_no_error(tmp_path):
    base, port = free_block(BMCS)
    nodes = generate_nodes(BMCS, base=base, port=port)
    endpoints = [BmcEndpoint(n["bmc_address"], n["bmc_port"], n["username"], n["password"]) for n in nodes]
    walls = []
    with SiteProcess(nodes, state_path=tmp_path / "bmc-state.json"), ThreadPoolExecutor(THREADS) as pool:
        for _ in range(ROUNDS):
            started = time.monotonic()
            errors = [e for e in pool.map(provision, endpoints) if e]
            walls.append(round(time.monotonic() - started, 2))
            assert errors == [], errors[:5]
    print(f"\n{BMCS} BMCs x {ROUNDS} rounds, {THREADS} threads: seconds per round {walls}")
    saved = json.loads((tmp_path / "bmc-state.json").read_text())["nodes"]
    # every round booted every server exactly once, from the network
    assert {(s["boots"], s["last_boot"]["device"], s["boot_override"]) for s in saved.values()} == {
        (ROUNDS, "pxe", None)}
