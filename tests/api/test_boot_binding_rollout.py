"""Callbacks bound to the boot a rollout started, on the simulated site (real IPMI, hosts that
really netboot): a stranger fetching a node's boot script cancels nothing; an artifact gone from
the store fails the node's boot at once with that reason; `apply` checks the store first."""

from __future__ import annotations

import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from helpers import copy_spec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "pipeline"))
from pipeline_site import LOOP_TIMEOUTS, Site, tune_spec  # noqa: E402

from provisioner import pipeline  # noqa: E402
from provisioner.context import Context, Settings  # noqa: E402
from provisioner.errors import ReleaseError  # noqa: E402

NODE, MAC = "r2n07", "52-54-00-0a-02-07"


@pytest.fixture
def site(tmp_path):
    from provisioner.lab.site import Lab

    spec = tune_spec(copy_spec(tmp_path / "spec"), nodes={NODE}, rollout={"timeouts": LOOP_TIMEOUTS})
    s = Site(spec, tmp_path / "data", Context(Settings(spec_dir=spec, data_dir=tmp_path / "data", actor="alice")))
    s.lab = Lab(s.ctx, flash_seconds=0.5).start()  # a flash long enough for a stranger to interfere
    pipeline.promote(s.ctx, s.build(), "production", force_gate=True)
    yield s
    s.stop()


def http_get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def callbacks(site) -> list[str]:
    return [e["event"] for e in site.ctx.store.node_events(NODE) if e["source"] == "callback"]


def test_twenty_fetches_of_a_nodes_script_during_its_flash_leave_the_flash_and_the_rollout_alone(site):
    base = site.lab.services.service.http_base
    done = threading.Event()
    answers: list[int] = []

    def stranger():  # anyone on the provisioning network knows the MACs
        while not done.is_set():
            if "started" in callbacks(site) and site.ctx.store.node(NODE).state == "flashing":
                answers.extend(http_get(f"{base}/boot/{MAC}.ipxe") for _ in range(20))
                return
            done.wait(0.02)

    t = threading.Thread(target=stranger, daemon=True)
    t.start()
    try:
        result = pipeline.apply(site.ctx, "production")
    finally:
        done.set()
        t.join()
    assert len(answers) == 20  # it did fetch in the middle of the flash
    assert result.status == "done", result.as_dict()
    assert "flashed" in callbacks(site)
    assert not [e for e in site.ctx.store.node_events(NODE) if e["event"] == "suspicious"]


def test_an_artifact_deleted_from_the_store_fails_the_boot_at_once_with_that_reason(site):
    kernel = next(p for p in site.ctx.store.get_release(site.ctx.store.current_release_id("production"))
                  .document["boot"]["profiles"] if p["name"] == "flasher")["kernel"]["sha256"]

    def progress(e):
        if e.get("event") == "node_step" and e.get("step") == "inband_flash":
            site.ctx.artifacts.path(kernel).unlink()  # after apply's check, before the node boots

    result = pipeline.apply(site.ctx, "production", progress=progress)
    assert result.status == "halted"
    assert f"artifact sha256:{kernel[:12]} is missing" in result.failed[NODE], result.failed
    assert "no report within" not in result.failed[NODE]


def test_apply_refuses_a_release_whose_artifact_is_gone_before_touching_any_bmc(site):
    rel = site.ctx.store.get_release(site.ctx.store.current_release_id("production"))
    image = rel.document["manifests"]["r650"]["components"][1]["image"]["sha256"]
    site.ctx.artifacts.path(image).unlink()
    before = len(site.bmc_log(NODE))
    with pytest.raises(ReleaseError, match=f"artifact sha256:{image} in the store"):
        pipeline.apply(site.ctx, "production")
    assert len(site.bmc_log(NODE)) == before  # not even read: no session, no power cycle
