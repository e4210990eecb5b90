"""`provisioner lab up|status|fault|down`: a simulated site in the background, its state kept across restarts."""

from __future__ import annotations

import json
import subprocess

from helpers import need_tool, private_spec, run_cli


class Site:
    def __init__(self, tmp_path):
        self.spec, self.data = private_spec(tmp_path), tmp_path / "data"

    def cli(self, *args):
        return run_cli(*args, spec=self.spec, data=self.data)


def test_lab_up_status_fault_down_and_a_restart_keeps_the_firmware(tmp_path):
    need_tool("ipmitool")
    site = Site(tmp_path)
    try:
        up = site.cli("lab", "up", "--json")
        assert up.returncode == 0, up.stderr
        assert json.loads(up.stdout)["nodes"] == 20

        status = json.loads(site.cli("lab", "status", "--json").stdout)
        assert len(status) == 20
        node = next(n for n in status if n["name"] == "r1n05")
        for key in ("name", "driver", "bmc_address", "bmc_port", "username", "password", "power", "firmware"):
            assert key in node, key
        assert set(node["firmware"]) == {"bmc", "bios", "nic", "raid"}
        assert {n["driver"] for n in status} == {"ipmi", "redfish"}  # the example is a mixed fleet

        # a peer nobody here wrote answers with the credentials lab status hands out
        r = subprocess.run(["ipmitool", "-I", "lanplus", "-C", "3", "-H", node["bmc_address"], "-p",
                            str(node["bmc_port"]), "-U", node["username"], "-P", node["password"], "power", "status"],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0 and "Chassis Power is on" in r.stdout, r.stderr
        # ...and so does a Redfish BMC, over TLS checked against the CA the lab published
        rf = next(n for n in status if n["name"] == "r2n05")
        r = subprocess.run(["curl", "-sS", "--cacert", str(site.data / "secrets" / "lab.ca.pem"), "-u",
                            f"{rf['username']}:{rf['password']}",
                            f"https://{rf['bmc_address']}:{rf['bmc_port']}/redfish/v1/Systems/1"],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0 and json.loads(r.stdout)["PowerState"] == "On", r.stderr

        fault = site.cli("lab", "fault", "--node", "r2n05", "--hand-flash", "nic=14.30.0")
        assert fault.returncode == 0, fault.stderr
        # faults of an update task are for Redfish BMCs; packet loss is for IPMI ones: one line each
        assert site.cli("lab", "fault", "--node", "r2n05", "--task-fails").returncode == 0
        for node, option in (("r1n05", "--task-fails"), ("r2n05", "--loss")):
            wrong = site.cli("lab", "fault", "--node", node, option, *(["0.1"] if option == "--loss" else []))
            assert wrong.returncode != 0 and "Traceback" not in wrong.stderr, wrong.stderr
            assert len(wrong.stderr.strip().splitlines()) == 1, wrong.stderr
        assert site.cli("lab", "down").returncode == 0
        assert site.cli("lab", "up").returncode == 0  # a restart keeps the servers' firmware
        status = json.loads(site.cli("lab", "status", "--json").stdout)
        assert next(n for n in status if n["name"] == "r2n05")["firmware"]["nic"] == "14.30.0"
    finally:
        site.cli("lab", "down")
    gone = site.cli("lab", "fault", "--node", "r2n05", "--unreachable")
    assert gone.returncode != 0 and "no lab is running" in gone.stderr and "Traceback" not in gone.stderr
