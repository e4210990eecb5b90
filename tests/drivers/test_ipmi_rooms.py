"""The IPMI driver's rooms: wire format without I/O, one error translation, one module touching
pyghmi's private state, and no production module naming the simulator."""

from __future__ import annotations

import ast
from pathlib import Path

import pyghmi.exceptions
import pytest

from provisioner.drivers import ipmi_errors, ipmi_oem
from provisioner.drivers.base import BmcEndpoint
from provisioner.drivers.ipmi_wire import boot_flags, read_boot_flags
from provisioner.errors import BmcAuthError, BmcBusy, BmcUnreachable, DriverError, Unsupported
from provisioner.lab.ipmi_oem import SIM_MANUFACTURER_ID, LabOem

DRIVERS = Path(__file__).resolve().parents[2] / "provisioner" / "drivers"
EP = BmcEndpoint("10.0.0.9", 623, "admin", "secret")


@pytest.mark.parametrize("device, mode, data", [
    ("pxe", "uefi", [5, 0xA0, 0x04, 0, 0, 0]),   # valid, next boot only, EFI; selector 1 << 2
    ("pxe", "bios", [5, 0x80, 0x04, 0, 0, 0]),   # valid, next boot only, PC compatible
    ("disk", "uefi", [5, 0xA0, 0x08, 0, 0, 0]),
    ("default", "uefi", [5, 0, 0, 0, 0, 0]),     # not valid: the BIOS decides
])
def test_boot_flags_are_laid_out_as_ipmi_2_0_table_28_14_says(device, mode, data):
    flags = boot_flags(device, mode)
    assert list(flags) == data
    # a Get System Boot Options answer is [parameter version, parameter, flags...]
    assert read_boot_flags(bytes([1, 5]) + flags[1:]) == ((device, mode) if device != "default" else ("default",) * 2)


@pytest.mark.parametrize("error, expected", [
    (pyghmi.exceptions.IpmiException("Unauthorized name"), BmcAuthError),
    (pyghmi.exceptions.IpmiException("Incorrect password provided"), BmcAuthError),
    (pyghmi.exceptions.IpmiException("Invalid command", 0xC1), Unsupported),
    (pyghmi.exceptions.IpmiException("Node busy", 0xC0), BmcBusy),
    (pyghmi.exceptions.IpmiException("timeout", 0xFFFF), BmcUnreachable),
    (pyghmi.exceptions.IpmiException("Session no longer connected"), BmcUnreachable),
    (ConnectionRefusedError(111, "Connection refused"), BmcUnreachable),
    (pyghmi.exceptions.IpmiException("Parameter out of range", 0xC9), DriverError),
])
def test_pyghmi_errors_become_our_error_tree_in_one_place(error, expected):
    with pytest.raises(expected) as caught, ipmi_errors.map_exceptions(EP):
        raise error
    assert type(caught.value) is expected and str(caught.value).startswith("10.0.0.9:623: ")
    assert caught.value.__cause__ is None and "secret" not in str(caught.value)


def test_a_completion_code_is_named_with_pyghmis_text_for_it():
    e = ipmi_errors.completion_error(EP, 0xC1, 0x00, 0x08)
    assert isinstance(e, Unsupported) and "does not support this command" in str(e)


def imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return names


def test_only_the_compat_module_touches_pyghmis_private_modules():
    touching = sorted(p.name for p in DRIVERS.glob("*.py") if any(".private" in n for n in imports(p)))
    assert touching == ["pyghmi_fixes.py"]


def test_no_production_driver_module_names_the_simulator():
    # fake.py is the in-memory test double and reads images the way the lab does, on purpose
    for p in sorted(set(DRIVERS.glob("*.py")) - {DRIVERS / "fake.py"}):
        text = p.read_text()
        assert not any(n.startswith("provisioner.lab") for n in imports(p)), p.name
        assert str(SIM_MANUFACTURER_ID) not in text and "sim_oem" not in text, p.name


def test_the_labs_oem_extension_is_found_by_the_manufacturer_its_bmcs_name():
    assert isinstance(ipmi_oem.extension_for(SIM_MANUFACTURER_ID), LabOem)
    assert ipmi_oem.extension_for(0x0002A2) is None  # any real vendor: standard commands only
