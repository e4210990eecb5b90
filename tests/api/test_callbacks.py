"""Node callbacks as a hostile node would send them: each report must fit the one boot its token
was issued for (action, release, images), bodies are parsed strictly, and nothing a node says about
its firmware changes what the pipeline believes."""

from __future__ import annotations

import logging

import pytest
from helpers import pinned


def events(server, node: str) -> list[tuple[str, str]]:
    return [(e["source"], e["event"]) for e in server.ctx.store.node_events(node)]


def active(server, node: str) -> None:
    server.ctx.store.update_node(node, state="active", observed=pinned(server.rel, "r650"),
                                 installed_release=server.rel.id, release_id=server.rel.id)


def test_a_local_boot_token_cannot_report_installed(server):
    active(server, "r1n04")
    token = server.token("52-54-00-0a-01-04")  # a local boot: firmware and image match
    status, _, body = server.post("/api/v1/callback/r1n04/installed", {"release": 12345}, token)
    assert status == 409, body
    assert b"for a local boot, which reports booted/failed, not installed" in body
    assert server.ctx.store.node("r1n04").installed_release == server.rel.id
    assert events(server, "r1n04")[-1] == ("netboot", "suspicious")
    # nor with the real release id (it made `plan` skip a reimage the node was due)
    server.ctx.store.update_node("r1n04", installed_release=None)
    assert server.post("/api/v1/callback/r1n04/installed", {"release": server.rel.id}, token)[0] == 409
    assert server.ctx.store.node("r1n04").installed_release is None


def test_a_report_naming_another_release_than_its_boot_is_refused_and_marked_suspicious(server):
    server.ctx.store.update_node("r1n06", state="installing", observed=pinned(server.rel, "r650"))
    server.ctx.store.boots.expect("r1n06", "install", server.rel.id)  # as the rollout does
    token = server.token("52-54-00-0a-01-06")
    status, _, body = server.post("/api/v1/callback/r1n06/installed", {"release": "0" * 64}, token)
    assert status == 409 and b"this boot is for" in body
    assert server.ctx.store.node("r1n06").installed_release is None
    suspicious = [e for e in server.ctx.store.node_events("r1n06") if e["event"] == "suspicious"]
    assert suspicious and suspicious[-1]["details"]["release"] == "0" * 64
    # the boot is still the node's: its real report is taken
    status, _, body = server.post("/api/v1/callback/r1n06/installed", {"release": server.rel.id}, token)
    assert status == 200, body
    assert server.ctx.store.node("r1n06").installed_release == server.rel.id


def test_reported_firmware_never_changes_what_the_gate_hands_the_node(server):
    server.ctx.store.update_node("r1n05", state="flashing", observed={**pinned(server.rel, "r650"), "bios": "1.14.0"})
    token = server.token("52-54-00-0a-01-05")
    server.post("/api/v1/callback/r1n05/flashed", {"firmware": {"bios": "1.12.1"}}, token)
    assert server.ctx.store.node("r1n05").observed["bios"] == "1.14.0"
    assert "HELD" not in server.script("52-54-00-0a-01-05")
    # the same from a boot the rollout started: accepted, recorded, and still not believed
    server.ctx.store.boots.expect("r1n05", "flash", server.rel.id)
    token = server.token("52-54-00-0a-01-05")
    status, _, body = server.post("/api/v1/callback/r1n05/flashed",
                                  {"release": server.rel.id, "firmware": {"bios": "1.12.1"}}, token)
    assert status == 200, body
    assert server.ctx.store.node("r1n05").observed["bios"] == "1.14.0"


def test_a_failure_reported_with_a_local_token_on_a_staging_node_is_refused(server):
    active(server, "s1n02")
    server.ctx.store.update_node("s1n02", observed=pinned(server.rel, server.ctx.store.node("s1n02").model))
    token = server.token("52-54-00-0a-09-02")
    status, _, body = server.post("/api/v1/callback/s1n02/failed", {"error": "made up"}, token)
    assert status == 409, body
    assert server.ctx.store.node("s1n02").state == "active"


def test_fetching_a_script_a_hundred_times_leaves_one_token_and_one_event(server):
    server.ctx.store.update_node("r2n01", state="installing", observed=pinned(server.rel, "r650"))
    before = len(server.ctx.store.node_events("r2n01"))
    answers = [server.get("/boot/52-54-00-0a-02-01.ipxe") for _ in range(100)]
    tokens = {b.decode().split("provisioner.token=")[1].split()[0] for s, _, b in answers if s == 200}
    assert len(tokens) == 1
    assert len(server.ctx.store.node_events("r2n01")) - before == 1
    limited = [h for s, h, _ in answers if s == 429]
    assert limited and limited[0]["retry-after"] == "1"  # a node fetches once per boot; 100 is a flood


def test_an_event_the_boot_does_not_report_is_a_409_and_an_unknown_one_a_400(server):
    server.ctx.store.update_node("r2n02", state="installing", observed=pinned(server.rel, "r650"))
    server.ctx.store.boots.expect("r2n02", "install", server.rel.id)
    token = server.token("52-54-00-0a-02-02")
    assert server.post("/api/v1/callback/r2n02/booted", {}, token)[0] == 409
    assert server.post("/api/v1/callback/r2n02/flashed", {"release": server.rel.id}, token)[0] == 409
    assert server.post("/api/v1/callback/r2n02/rebooted", {}, token)[0] == 400
    assert server.post("/api/v1/callback/r2n02/progress", {"percent": 40, "message": "disk"}, token)[0] == 200


BAD_BODIES = {
    "a list": b"[1, 2]",
    "a string": b'"installed"',
    "a number": b"12345",
    "event as a list": b'{"event": ["installed"]}',
    "event as an object": b'{"event": {"a": 1}}',
    "30,000 levels deep (within 64 KiB)": b"[" * 30_000 + b"]" * 30_000,
    "30,000 objects deep": b'{"a":' * 10_000 + b"1" + b"}" * 10_000,
    "not JSON": b"\xff\xfe{",
    "NaN": b'{"percent": NaN}',
}


@pytest.mark.parametrize("body", BAD_BODIES.values(), ids=BAD_BODIES.keys())
def test_a_malformed_body_is_a_400_without_a_token_and_never_a_traceback(server, body, caplog):
    with caplog.at_level(logging.INFO):
        status, headers, text = server.post("/api/v1/callback/r2n03", body)
    assert status == 400, text
    assert headers["content-type"] == "application/problem+json"
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


TOKEN_BODIES = {
    "firmware as a list": ("flashed", {"release": "x", "firmware": ["bios", "1.0"]}),
    "release as an object": ("flashed", {"release": {"id": 1}}),
    "an unknown key": ("progress", {"percent": 5, "root": True}),
    "percent out of range": ("progress", {"percent": 1000}),
    "a message past 1 KiB": ("progress", {"message": "x" * 2000}),
    "no release": ("flashed", {"firmware": {"bios": "1.0"}}),
}


@pytest.mark.parametrize("event,body", TOKEN_BODIES.values(), ids=TOKEN_BODIES.keys())
def test_a_malformed_report_with_a_valid_token_is_a_400(server, event, body, caplog):
    server.ctx.store.update_node("r2n04", state="flashing", observed={**pinned(server.rel, "r650"), "bios": "1.14.0"})
    server.ctx.store.boots.expect("r2n04", "flash", server.rel.id)
    token = server.token("52-54-00-0a-02-04")
    with caplog.at_level(logging.INFO):
        status, _, text = server.post(f"/api/v1/callback/r2n04/{event}", body, token)
    assert status == 400, text
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert server.ctx.store.node("r2n04").state == "flashing"


def test_a_body_past_64_kib_is_a_413_and_the_store_does_not_grow(server):
    db = server.ctx.settings.data_dir / "provisioner.db"
    before = db.stat().st_size
    for size in (70 * 1024, 20 * 1024 * 1024):
        status, _, _ = server.post("/api/v1/callback/r2n05/progress", b'{"message": "' + b"x" * size + b'"}')
        assert status == 413
    assert server.post("/api/v1/callback/r2n05", b"[" * 100_000 + b"]" * 100_000)[0] == 413  # deep and big
    assert db.stat().st_size == before


def test_a_one_megabyte_header_or_too_many_headers_are_a_431(server):
    assert server.get("/healthz", headers={"X-Big": "a" * 1024 * 1024})[0] == 431
    assert server.get("/healthz", headers={f"X-H{i}": "1" for i in range(150)})[0] == 431
    assert server.get("/healthz")[0] == 200  # and the server still serves


def test_twenty_concurrent_first_fetches_of_a_script_share_one_boot(server):
    from concurrent.futures import ThreadPoolExecutor

    server.ctx.store.update_node("r2n07", state="installing", observed=pinned(server.rel, "r650"))
    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(lambda _: server.get("/boot/52-54-00-0a-02-07.ipxe"), range(20)))
    assert {s for s, _, _ in answers} == {200}
    tokens = {b.decode().split("provisioner.token=")[1].split()[0] for _, _, b in answers}
    assert len(tokens) == 1
    status, _, body = server.get(f"/api/v1/callback/r2n07/started?token={tokens.pop()}")
    assert status == 200, body
