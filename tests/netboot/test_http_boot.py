"""The HTTP boot routes over real sockets (Flask under cheroot on loopback)."""

from __future__ import annotations

import hashlib
import json
import urllib.error
import urllib.request

import pytest
from helpers import built_site, pinned

from provisioner.netboot.service import BootService
from provisioner.serve.services import BootServices


@pytest.fixture
def site(spec_dir, tmp_path):
    ctx, rel = built_site(spec_dir, tmp_path / "data")
    svc = BootService(ctx.store, ctx.artifacts, "http://127.0.0.1:0")
    services = BootServices(svc, tftp_bind=None, http_bind="127.0.0.1:0", boot_files=None).start()
    svc.http_base = f"http://127.0.0.1:{services.http.port}"
    yield ctx, rel, svc.http_base
    services.stop()


def get(url, headers=None, data=None):
    req = urllib.request.Request(url, headers=headers or {}, data=data)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def test_a_node_due_a_reimage_gets_its_install_script_by_mac(site):
    ctx, rel, base = site
    ctx.store.update_node("r1n01", state="installing", observed=pinned(rel, "r650"))
    status, body, _ = get(f"{base}/boot/52-54-00-0a-01-01.ipxe")
    text = body.decode()
    assert status == 200 and text.startswith("#!ipxe")
    assert "provisioner.mode=install provisioner.node=r1n01" in text and rel.id in text


def test_an_unknown_mac_gets_a_local_boot_script(site):
    _, _, base = site
    status, body, _ = get(f"{base}/boot.ipxe?mac=52:54:00:99:99:99")
    assert status == 200 and b"52:54:00:99:99:99: MAC not in the inventory" in body


def test_artifacts_are_served_by_digest_with_range_support(site):
    ctx, rel, base = site
    digest = rel.document["boot"]["profiles"][0]["kernel"]["sha256"]
    status, body, _ = get(f"{base}/artifacts/sha256/{digest}")
    assert status == 200 and hashlib.sha256(body).hexdigest() == digest
    status, part, headers = get(f"{base}/artifacts/sha256/{digest}", headers={"Range": "bytes=100-199"})
    assert status == 206 and part == body[100:200]
    assert headers["Content-Range"] == f"bytes 100-199/{len(body)}"
    assert get(f"{base}/artifacts/sha256/{'0' * 64}")[0] == 404


def test_a_tampered_artifact_is_not_served(site):
    ctx, rel, base = site
    digest = rel.document["boot"]["profiles"][0]["initrd"]["sha256"]
    p = ctx.artifacts.path(digest)
    p.chmod(0o644)
    p.write_bytes(b"tampered")
    assert get(f"{base}/artifacts/sha256/{digest}")[0] == 410


def script_token(text: str) -> str:
    return text.split("provisioner.token=")[1].split()[0]


def test_the_callback_token_is_per_node_per_boot_and_single_use(site):
    ctx, rel, base = site
    ctx.store.update_node("r1n01", state="installing", observed=pinned(rel, "r650"))
    ctx.store.update_node("r1n02", state="installing", observed=pinned(rel, "r650"))
    ctx.store.boots.expect("r1n01", "install", rel.id)  # as the rollout does before it power-cycles
    t1 = script_token(get(f"{base}/boot/52-54-00-0a-01-01.ipxe")[1].decode())
    t2 = script_token(get(f"{base}/boot/52-54-00-0a-01-02.ipxe")[1].decode())

    # another node's token is refused
    status, body, _ = get(f"{base}/api/v1/callback/r1n01/started?token={t2}")
    assert status == 403 and b"not valid for node r1n01" in body
    # progress is accepted, the final result closes the token
    assert get(f"{base}/api/v1/callback/r1n01/started?token={t1}")[0] == 200
    payload = json.dumps({"event": "installed", "release": rel.id}).encode()
    status, _, _ = get(f"{base}/api/v1/callback/r1n01", headers={"Authorization": f"Bearer {t1}",
                       "Content-Type": "application/json"}, data=payload)
    assert status == 200
    assert ctx.store.node("r1n01").installed_release == rel.id
    status, body, _ = get(f"{base}/api/v1/callback/r1n01/progress?token={t1}")
    assert status == 403 and b"already used" in body


def test_fetching_the_script_again_hands_out_the_same_token_and_a_new_boot_a_new_one(site):
    ctx, rel, base = site
    ctx.store.update_node("r1n03", state="installing", observed=pinned(rel, "r650"))
    first = script_token(get(f"{base}/boot/52-54-00-0a-01-03.ipxe")[1].decode())
    again = script_token(get(f"{base}/boot/52-54-00-0a-01-03.ipxe")[1].decode())
    assert again == first
    ctx.store.boots.expect("r1n03", "install", rel.id)  # the rollout power-cycles it: a new boot
    new = script_token(get(f"{base}/boot/52-54-00-0a-01-03.ipxe")[1].decode())
    assert new != first
    assert get(f"{base}/api/v1/callback/r1n03/started?token={first}")[0] == 403
    assert get(f"{base}/api/v1/callback/r1n03/started?token={new}")[0] == 200


def test_the_flasher_config_lists_each_image_url_and_sha256_and_the_flash_result_is_recorded(site):
    ctx, rel, base = site
    ctx.store.update_node("r1n04", state="flashing", observed={**pinned(rel, "r650"), "bios": "1.14.0"})
    ctx.store.boots.expect("r1n04", "flash", rel.id)
    script = get(f"{base}/boot/52-54-00-0a-01-04.ipxe")[1].decode()
    token = script_token(script)
    flasher_url = script.split("provisioner.flasher=")[1].split()[0]
    status, body, _ = get(flasher_url)
    cfg = json.loads(body)
    assert status == 200 and [c["name"] for c in cfg["components"]] == ["bios"]
    image = get(cfg["components"][0]["url"])[1]
    assert hashlib.sha256(image).hexdigest() == cfg["components"][0]["sha256"]
    done = json.dumps({"event": "flashed", "release": rel.id, "firmware": {"bios": "1.13.2"}}).encode()
    assert get(f"{base}/api/v1/callback/r1n04?token={token}", data=done,
               headers={"Content-Type": "application/json"})[0] == 200
    node = ctx.store.node("r1n04")
    # the report is recorded; what the node runs is the rollout's next BMC read to say
    assert node.state == "flashed" and node.observed["bios"] == "1.14.0"
    assert ctx.store.node_events("r1n04")[-1]["details"]["firmware"] == {"bios": "1.13.2"}


def test_a_node_on_a_blocked_version_gets_the_hold_script_on_http(site):
    ctx, rel, base = site
    ctx.store.update_node("r1n05", state="installing", observed={**pinned(rel, "r650"), "bios": "1.12.1"})
    ctx.store.block("nic", "22.31.6", "link flaps", by="oncall")  # also blocks the release's nic pin
    text = get(f"{base}/boot/52-54-00-0a-01-05.ipxe")[1].decode()
    assert "HELD" in text and "kernel" not in text
