"""The IPMI driver against OpenIPMI's ipmi_sim, a BMC simulator nobody here wrote: power and boot device."""

from __future__ import annotations

import subprocess
import textwrap

import pytest
from helpers import need_tool

from provisioner.drivers.base import BmcEndpoint
from provisioner.drivers.ipmi import IpmiDriver
from provisioner.lab.ipmi_server import wait_for_bmc
from provisioner.lab.loopback import free_block

# ipmi_sim runs this for every chassis change and reads power and boot back from it (research
# note §4): "<mc> get <parm>..." prints "parm:value" lines, "<mc> set <parm> <value>..." stores.
CHASSIS_HOOK = """\
#!/bin/sh
dir=$(dirname "$0")
shift
op=$1; shift
echo "$op $*" >> "$dir/calls"
case $op in
get)
  for p in "$@"; do
    case $p in
      power) echo "power:$(cat "$dir/power" 2>/dev/null || echo 0)" ;;
      boot) echo "boot:$(cat "$dir/boot" 2>/dev/null || echo default)" ;;
    esac
  done ;;
set)
  while [ $# -ge 2 ]; do
    case $1 in power|boot) echo "$2" > "$dir/$1" ;; esac
    shift 2
  done ;;
esac
"""


@pytest.fixture
def ipmi_sim(tmp_path):
    need_tool("ipmi_sim")
    address, port = free_block(1)
    hook = tmp_path / "chassis.sh"
    hook.write_text(CHASSIS_HOOK)
    hook.chmod(0o755)
    (tmp_path / "lan.conf").write_text(textwrap.dedent(f"""\
        name "provisioner-test"
        set_working_mc 0x20
          startlan 1
            addr {address} {port}
            priv_limit admin
            allowed_auths_callback none md2 md5 straight
            allowed_auths_user none md2 md5 straight
            allowed_auths_operator none md2 md5 straight
            allowed_auths_admin none md2 md5 straight
            guid a123456789abcdefa123456789abcdef
          endlan
          chassis_control "{hook} 0x20"
          user 2 true "admin" "password" admin 10 none md2 md5 straight
        """))
    (tmp_path / "sim.emu").write_text(textwrap.dedent("""\
        mc_setbmc 0x20
        mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr
        mc_enable 0x20
        """))
    (tmp_path / "state").mkdir()
    proc = subprocess.Popen(["ipmi_sim", "-c", str(tmp_path / "lan.conf"), "-f", str(tmp_path / "sim.emu"),
                             "-s", str(tmp_path / "state"), "-n"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert wait_for_bmc(address, port, 10), "ipmi_sim did not answer"
        yield BmcEndpoint(address, port, "admin", "password"), tmp_path
    finally:
        proc.terminate()
        proc.wait(5)


def calls(tmp_path) -> list[str]:
    return (tmp_path / "calls").read_text().splitlines()


def test_driver_powers_an_openipmi_bmc_on_and_off(ipmi_sim):
    ep, hook_dir = ipmi_sim
    d = IpmiDriver(ep, timeout=5)
    assert d.power_status() == "off"
    d.power_on()
    assert d.power_status() == "on"
    d.power_off()
    assert d.power_status() == "off"
    assert [c for c in calls(hook_dir) if c.startswith("set")] == ["set power 1", "set power 0"]


def test_driver_sets_a_one_time_pxe_boot_on_an_openipmi_bmc(ipmi_sim):
    ep, hook_dir = ipmi_sim
    d = IpmiDriver(ep, timeout=5)
    d.set_one_time_boot("pxe", mode="bios")
    assert "set boot pxe" in calls(hook_dir)
    assert (hook_dir / "boot").read_text().strip() == "pxe"


def test_driver_power_cycle_of_an_openipmi_bmc_that_is_off_powers_it_on(ipmi_sim):
    ep, hook_dir = ipmi_sim
    d = IpmiDriver(ep, timeout=5)
    d.power_cycle()
    assert d.power_status() == "on"


def test_driver_reads_the_bmc_version_of_a_bmc_without_hpm(ipmi_sim):
    ep, _ = ipmi_sim
    d = IpmiDriver(ep, timeout=5)
    assert d.firmware_inventory() == {"bmc": "9.8.0"}  # Get Device ID: firmware 9.08, no aux
    assert not d.supports_oob_flash("bios")
    assert d.health()["bmc_firmware_revision"] == "9.08"
