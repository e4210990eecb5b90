"""The Redfish driver against simulated Redfish BMCs: update paths, faults, TLS, sessions, boot mode.

What the contract suite does not cover: SimpleUpdate pulling from our own artifact route, the push
fallback, ApplyTime OnReset, failed and interrupted tasks, the certificate check, Basic fallback,
the SoftwareId mapping and connection reuse.
"""

from __future__ import annotations

import hashlib
import threading

import bmc_harness
import pytest
from bmc_harness import FIRMWARE, MODEL
from cheroot import wsgi

from provisioner.api.app import create_app
from provisioner.drivers.base import BmcEndpoint
from provisioner.drivers.redfish import RedfishDriver
from provisioner.errors import BmcAuthError, BmcTimeout, BmcUnreachable, ImageRejected, Unsupported
from provisioner.lab.hpm import build_sim_payload
from provisioner.netboot.service import BootService
from provisioner.releases.artifacts import ArtifactStore

redfish_site = bmc_harness.redfish_site  # fixture


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def artifact_server(tmp_path):
    """Our boot HTTP app (GET /artifacts/sha256/<hex>) on loopback; yields (base URL, store, requests seen)."""
    store = ArtifactStore(tmp_path / "artifacts")
    seen: list[str] = []
    app = create_app(BootService(None, store, "http://127.0.0.1:0"))

    def logged(environ, start_response):
        seen.append(environ["PATH_INFO"])
        return app(environ, start_response)

    server = wsgi.Server(("127.0.0.1", 0), logged, numthreads=4)
    server.prepare()
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.bind_addr[1]}", store, seen
    server.stop()
    thread.join(5)


def driver_for(site, node="sim0000", **options) -> RedfishDriver:
    ep = site.endpoints("redfish")[node]
    options.setdefault("ca_bundle", str(site.ca_path))
    options.setdefault("poll_interval", 0.02)
    options.setdefault("timeout", 5.0)
    return RedfishDriver(BmcEndpoint(ep.address, ep.port, ep.username, ep.password, "redfish"), **options)


def events(site, node="sim0000", kinds=None) -> list[dict]:
    return [e for e in site.state(node)["log"] if kinds is None or e["event"] in kinds]


def test_simple_update_makes_the_bmc_pull_the_image_from_our_artifact_route(redfish_site, artifact_server):
    base, store, seen = artifact_server
    site = redfish_site()
    image = build_sim_payload("nic", "22.40.0", MODEL, size=5000)
    store.put(image)
    job = driver_for(site, image_server=base).flash("nic", image, sha(image), "22.40.0")
    assert (job.state, job.previous_version) == ("active", FIRMWARE["nic"])
    started = events(site, kinds={"upload_started"})[-1]
    assert started["how"] == "simple_update" and started["image_uri"] == f"{base}/artifacts/sha256/{sha(image)}"
    assert f"/artifacts/sha256/{sha(image)}" in seen
    assert site.firmware("sim0000")["nic"] == "22.40.0"


def test_a_bmc_that_cannot_reach_our_server_gets_the_image_pushed(redfish_site):
    site = redfish_site()
    image = build_sim_payload("raid", "52.30.0", MODEL, size=5000)
    driver = driver_for(site, image_server="http://127.0.0.1:9")  # discard port: nothing answers
    assert driver.flash("raid", image, sha(image), "52.30.0").state == "active"
    hows = [(e["event"], e.get("how")) for e in events(site, kinds={"upload_started", "rejected", "uploaded"})]
    assert hows[0] == ("upload_started", "simple_update") and hows[1][0] == "rejected"
    assert ("uploaded", "multipart_push") in hows[2:]


def test_a_bios_image_staged_until_reset_is_activated_by_a_power_cycle_then_verified(redfish_site):
    site = redfish_site()
    image = build_sim_payload("bios", "1.21.0", MODEL, size=5000)
    driver_for(site).flash("bios", image, sha(image), "1.21.0")
    order = [e["event"] for e in events(site, kinds={"staged", "power", "activated"})]
    assert order.index("staged") < order.index("power") < order.index("activated")
    assert site.firmware("sim0000")["bios"] == "1.21.0" and site.state("sim0000")["power"] == "on"


def test_a_failed_update_task_is_rejected_and_leaves_the_old_version_active(redfish_site):
    site = redfish_site()
    site.set_fault("sim0000", task_fails=True)
    image = build_sim_payload("nic", "22.40.0", MODEL)
    with pytest.raises(ImageRejected, match="Exception.*ActivateFailed") as e:
        driver_for(site).flash("nic", image, sha(image), "22.40.0")
    assert not e.value.retryable and e.value.job.state == "failed"
    assert site.firmware("sim0000")["nic"] == FIRMWARE["nic"]


def test_power_lost_during_an_update_is_retryable_and_flashing_again_succeeds(redfish_site):
    site = redfish_site()
    site.set_fault("sim0000", power_loss_in_update=True, outage_s=0.3)
    image = build_sim_payload("nic", "22.40.0", MODEL)
    driver = driver_for(site, retries=0, timeout=1.5)
    with pytest.raises((BmcUnreachable, BmcTimeout, ImageRejected)) as e:
        driver.flash("nic", image, sha(image), "22.40.0")
    assert site.firmware("sim0000")["nic"] == FIRMWARE["nic"]
    assert [x for x in events(site, kinds={"bmc_reboot"}) if x["reason"] == "power lost"]
    if isinstance(e.value, ImageRejected):  # the BMC came back first and said the task was interrupted
        assert "interrupted" in str(e.value)
    assert driver_for(site).flash("nic", image, sha(image), "22.40.0").state == "active"


def test_an_image_for_another_model_is_refused_by_the_bmc(redfish_site):
    site = redfish_site()
    image = build_sim_payload("nic", "22.40.0", "dl360g10")
    with pytest.raises(ImageRejected, match="VerificationFailed.*model"):
        driver_for(site).flash("nic", image, sha(image), "22.40.0")


def test_a_certificate_from_an_unknown_ca_is_refused_as_a_fatal_error(redfish_site, tmp_path):
    site = redfish_site()
    with pytest.raises(BmcAuthError, match="ca_bundle") as e:
        driver_for(site, ca_bundle=None).power_status()  # the system store does not know the lab CA
    assert not e.value.retryable


def test_the_driver_logs_in_with_a_session_and_logs_out_on_close(redfish_site):
    site = redfish_site()
    driver = driver_for(site)
    driver.power_status()
    bmc = site.bmcs["sim0000"]
    assert len(bmc.sessions) == 1
    driver.close()
    assert bmc.sessions == {}


def test_a_bmc_without_sessions_is_used_with_basic_authentication(redfish_site):
    site = redfish_site()
    site.nodes["sim0000"]["sessions"] = False
    driver = driver_for(site)
    driver.power_on()
    assert driver.power_status() == "on" and site.bmcs["sim0000"].sessions == {}


@pytest.mark.parametrize(("mode", "efi"), [("uefi", True), ("bios", False)])
def test_one_time_pxe_boot_carries_the_nodes_boot_mode(redfish_site, mode, efi):
    site = redfish_site()
    driver_for(site).set_one_time_boot("pxe", mode=mode)
    assert site.state("sim0000")["boot_override"] == {"device": "pxe", "persistent": False, "efi": efi}


def test_firmware_is_mapped_to_components_by_the_manifests_software_ids(redfish_site):
    ids = {"bmc": "iLO 5", "bios": "U32", "nic": "HPE-NIC", "raid": "P408i"}
    site = redfish_site()
    site.bmcs["sim0000"].software_ids = ids
    assert driver_for(site, software_ids=ids).firmware_inventory() == FIRMWARE
    # the mapping, not the member's Id, decides: a manifest that swaps two ids swaps what is read
    swapped = {**ids, "nic": "P408i", "raid": "HPE-NIC"}
    seen = driver_for(site, software_ids=swapped).firmware_inventory()
    assert (seen["nic"], seen["raid"]) == (FIRMWARE["raid"], FIRMWARE["nic"])


def test_many_operations_reuse_one_tls_connection(redfish_site):
    site = redfish_site()
    driver = driver_for(site)
    for _ in range(5):
        driver.power_status()
        driver.firmware_inventory()
    assert site.server.handshakes[site.bmcs["sim0000"].address] == 1


def test_a_bmc_slower_than_the_timeout_is_a_retryable_error(redfish_site):
    site = redfish_site()
    driver = driver_for(site, timeout=1.0, retries=0)
    driver.power_status()  # logged in
    site.set_fault("sim0000", delay_s=3.0)
    with pytest.raises((BmcTimeout, BmcUnreachable)) as e:
        driver.power_status()
    assert e.value.retryable


def test_a_component_the_bmc_does_not_list_cannot_be_flashed(redfish_site):
    site = redfish_site(firmware={"bmc": "2.1.0", "bios": "1.20.0"})
    assert not driver_for(site).supports_oob_flash("nic")
    image = build_sim_payload("nic", "22.40.0", MODEL)
    with pytest.raises(Unsupported):
        driver_for(site).flash("nic", image, sha(image), "22.40.0")


def test_asking_what_can_be_flashed_reads_no_inventory_again(redfish_site):
    """supports_oob_flash answers from the last inventory read (what is updateable does not change
    within a session); a flash still reads the versions before and, to verify, after."""
    site = redfish_site()
    address = site.bmcs["sim0000"].address
    inventory = ("GET", "/redfish/v1/UpdateService/FirmwareInventory")
    service = ("GET", "/redfish/v1/UpdateService")

    def reads(what):
        return site.server.requests.get((address, *what), 0)

    driver = driver_for(site)
    driver.firmware_inventory()
    assert [driver.supports_oob_flash(c) for c in (*FIRMWARE, "gpu")] == [True] * len(FIRMWARE) + [False]
    assert (reads(inventory), reads(service)) == (1, 1)
    image = build_sim_payload("nic", "22.40.0", MODEL)
    driver.flash("nic", image, sha(image), "22.40.0")  # pushed: no image_server
    assert (reads(inventory), reads(service)) == (3, 3)
    assert driver.firmware_inventory()["nic"] == "22.40.0"
    driver.close()
