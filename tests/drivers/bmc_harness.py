"""Fixtures for driver tests: simulated BMCs on loopback and one harness over every driver.

The harness gives a contract test the same view of a BMC whichever driver is under test: the
driver itself, and what the BMC saw (power, boot override, boots, firmware, uploads).
"""

from __future__ import annotations

import pytest

from provisioner.drivers import open_driver
from provisioner.drivers.base import BmcEndpoint
from provisioner.drivers.fake import FakeDriver
from provisioner.lab.bmc import SimSite
from provisioner.lab.bmc_process import generate_nodes
from provisioner.lab.loopback import free_block
from provisioner.lab.redfish_site import RedfishSite

FIRMWARE = {"bmc": "2.1.0", "bios": "1.20.0", "nic": "22.31.6", "raid": "7.00.60"}
MODEL = "r650"


@pytest.fixture
def sim_site():
    """make(count, **SimSite options) -> started SimSite; every site is stopped after the test."""
    sites = []

    def make(count: int = 1, **options) -> SimSite:
        base, port = free_block(count)
        nodes = generate_nodes(count, base=base, port=port, firmware=FIRMWARE)
        for n in nodes:
            n["model"] = MODEL
        site = SimSite(nodes, **options).start()
        sites.append(site)
        return site

    yield make
    for s in sites:
        s.stop()


class SimHarness:
    kind = "ipmi"

    def __init__(self, site: SimSite, node: str):
        self.site, self.node = site, node
        self.endpoint = site.endpoints()[node]
        self.driver = self.open()

    def open(self, endpoint: BmcEndpoint | None = None, **options):
        options.setdefault("timeout", 5.0)
        return open_driver(endpoint or self.endpoint, **options)

    def inspect(self) -> dict:
        st = self.site.state(self.node)
        o = st["boot_override"]
        return {"power": st["power"],
                "boot_override": o["device"] if o else None,
                "boot_mode": ("uefi" if o["efi"] else "bios") if o else None,  # the EFI bit it was sent
                "boots": st["boots"],
                "last_boot_device": st["last_boot"]["device"] if st["last_boot"] else None,
                "firmware": {c: fw["active"] for c, fw in st["firmware"].items()},
                "uploads": [e for e in st["log"] if e["event"] in ("upload_started", "uploaded")]}

    def hand_flash(self, component: str, version: str) -> None:
        self.site.hand_flash(self.node, component, version)

    def make_unreachable(self) -> None:
        self.site.set_fault(self.node, unreachable=True)

    def reject_password(self) -> None:
        self.site.set_fault(self.node, wrong_password=True)

    def lose_power_during_next_upload(self) -> None:
        self.site.set_fault(self.node, power_loss_at_block=2, outage_s=0.3)

    def close(self) -> None:
        self.driver.close()


class FakeHarness:
    kind = "fake"

    def __init__(self, address: str = "10.99.0.1"):
        FakeDriver.reset()
        self.bmc = FakeDriver.seed(address, firmware=FIRMWARE)
        self.endpoint = BmcEndpoint(address, 623, "admin", "password", "fake")
        self.driver = self.open()

    def open(self, endpoint: BmcEndpoint | None = None, **options):
        return open_driver(endpoint or self.endpoint, **options)

    def inspect(self) -> dict:
        b = self.bmc
        return {"power": b.power, "boot_override": b.boot_override, "boot_mode": b.boot_mode, "boots": b.boots,
                "last_boot_device": b.last_boot_device, "firmware": dict(b.firmware),
                "uploads": list(b.uploads)}

    def hand_flash(self, component: str, version: str) -> None:
        self.bmc.firmware[component] = version

    def make_unreachable(self) -> None:
        self.bmc.unreachable = True

    def reject_password(self) -> None:
        self.bmc.password = "something-else"

    def lose_power_during_next_upload(self) -> None:
        self.bmc.power_loss_during_flash = True

    def close(self) -> None:
        FakeDriver.reset()


def job_fields(job) -> dict:
    """A flash's outcome as a dict, whether the driver returns the contract's FlashJob or a dict."""
    return job if isinstance(job, dict) else job.as_dict()


@pytest.fixture
def redfish_site(tmp_path):
    """make(count, **RedfishSite options) -> started RedfishSite (TLS from a CA under tmp_path)."""
    sites = []

    def make(count: int = 1, firmware: dict | None = None, **options) -> RedfishSite:
        base, port = free_block(count, port=8443)
        nodes = generate_nodes(count, base=base, port=port, firmware=firmware or FIRMWARE)
        for n in nodes:
            n["model"] = MODEL
        options.setdefault("activation_s", 0.05)
        site = RedfishSite(nodes, state_path=tmp_path / f"redfish-{len(sites)}.json", cert_dir=tmp_path,
                           **options).start()
        sites.append(site)
        return site

    yield make
    for s in sites:
        s.stop()


class RedfishHarness(SimHarness):
    kind = "redfish"

    def __init__(self, site: RedfishSite, node: str):
        self.site, self.node = site, node
        ep = site.endpoints("redfish")[node]
        self.endpoint = BmcEndpoint(ep.address, ep.port, ep.username, ep.password, "redfish",
                                    options=(("ca_bundle", str(site.ca_path)), ("poll_interval", 0.02)))
        self.driver = self.open()

    def inspect(self) -> dict:
        seen = super().inspect()
        seen["uploads"] = [e for e in self.site.state(self.node)["log"] if e["event"] in ("upload_started", "uploaded")]
        return seen

    def open(self, endpoint: BmcEndpoint | None = None, **options):
        options.pop("block_size", None)  # an IPMI upload's block size: Redfish sends the image whole
        return super().open(endpoint, **options)

    def lose_power_during_next_upload(self) -> None:
        self.site.set_fault(self.node, power_loss_in_update=True)


@pytest.fixture(params=["fake", "ipmi", "redfish"])
def harness(request, sim_site, redfish_site):
    if request.param == "fake":
        h = FakeHarness()
    elif request.param == "ipmi":
        h = SimHarness(sim_site(1, activation_s=0.05), "sim0000")
    else:
        h = RedfishHarness(redfish_site(1), "sim0000")
    yield h
    h.close()
