"""Drivers are found by name through the "provisioner.drivers" entry points, built-ins without them."""

from __future__ import annotations

import importlib.metadata

import pytest

from provisioner.drivers import BUILTIN, driver_names, get_driver, open_driver
from provisioner.drivers.base import BmcEndpoint
from provisioner.drivers.fake import FakeDriver
from provisioner.drivers.ipmi import IpmiDriver
from provisioner.errors import Unsupported


def test_built_in_drivers_are_found_by_name():
    assert get_driver("fake") is FakeDriver and get_driver("ipmi") is IpmiDriver
    assert {"fake", "ipmi"} <= set(driver_names())


def test_without_installed_entry_points_the_built_ins_are_still_found(monkeypatch):
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda **kw: [])
    assert get_driver("ipmi") is IpmiDriver and sorted(BUILTIN) == driver_names()


def test_an_unknown_driver_is_one_clear_error():
    with pytest.raises(Unsupported, match="unknown BMC driver 'no-such'; known drivers: .*fake, ipmi"):
        get_driver("no-such")


def test_open_driver_picks_the_class_from_the_endpoint():
    d = open_driver(BmcEndpoint("10.1.2.3", 623, "admin", "pw", "fake"))
    assert isinstance(d, FakeDriver) and "pw" not in repr(d.endpoint)
