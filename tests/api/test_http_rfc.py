"""The boot routes per the RFCs and as a careful server: Range per RFC 9110 §14, errors that name no
local path, one charset, strict MAC syntax, and artifacts verified at every read."""

from __future__ import annotations

import hashlib

import pytest


@pytest.fixture(scope="module")
def kernel(server):
    digest = server.rel.document["boot"]["profiles"][0]["kernel"]["sha256"]
    status, _, body = server.get(f"/artifacts/sha256/{digest}")
    assert status == 200 and hashlib.sha256(body).hexdigest() == digest
    return digest, body


@pytest.mark.parametrize("header", ["bytes=a-b", "bytes=5-1", "items=0-5", "bytes=0-1,5-6", "bytes=", "bytes 0-5"])
def test_a_range_that_is_invalid_or_in_an_unknown_unit_or_several_is_ignored_with_a_200(server, kernel, header):
    digest, body = kernel
    status, headers, part = server.get(f"/artifacts/sha256/{digest}", headers={"Range": header})
    assert status == 200 and part == body and "content-range" not in headers


def test_a_suffix_range_longer_than_the_file_is_the_whole_file(server, kernel):
    digest, body = kernel
    status, headers, part = server.get(f"/artifacts/sha256/{digest}", headers={"Range": f"bytes=-{len(body) * 2}"})
    assert status == 206 and part == body
    assert headers["content-range"] == f"bytes 0-{len(body) - 1}/{len(body)}"


def test_ranges_within_the_file_and_past_its_end(server, kernel):
    digest, body = kernel
    status, headers, part = server.get(f"/artifacts/sha256/{digest}", headers={"Range": "bytes=100-199"})
    assert status == 206 and part == body[100:200] and headers["content-range"] == f"bytes 100-199/{len(body)}"
    status, headers, part = server.get(f"/artifacts/sha256/{digest}", headers={"Range": "bytes=-10"})
    assert status == 206 and part == body[-10:]
    status, headers, _ = server.get(f"/artifacts/sha256/{digest}", headers={"Range": f"bytes={len(body)}-"})
    assert status == 416 and headers["content-range"] == f"bytes */{len(body)}"
    # If-Range with another validator: the whole file (RFC 9110 §13.1.5)
    status, _, part = server.get(f"/artifacts/sha256/{digest}", headers={"Range": "bytes=0-9", "If-Range": '"x"'})
    assert status == 200 and part == body
    status, _, part = server.get(f"/artifacts/sha256/{digest}", headers={"If-None-Match": f'"{digest}"'})
    assert status == 304 and part == b""


def test_a_404_names_no_local_path(server):
    status, _, body = server.get(f"/artifacts/sha256/{'0' * 64}")
    data_dir = str(server.ctx.settings.data_dir)
    assert status == 404 and data_dir.encode() not in body and b"/tmp" not in body


def test_a_script_has_exactly_one_charset(server):
    _, headers, _ = server.get("/boot/52-54-00-0a-01-07.ipxe")
    assert headers["content-type"] == "text/plain; charset=utf-8"


@pytest.mark.parametrize("mac", ["xx52yy54zz000a0101", "52:54-00:0a:01:07", "52:54:00:0a:01", "5254.000a.0107",
                                 "52:54:00:0a:01:07:00", "52::54:00:0a:01:07"])
def test_a_mac_that_is_not_six_octets_in_one_style_is_refused(server, mac):
    assert server.get(f"/boot/{mac}.ipxe")[0] == 400


@pytest.mark.parametrize("mac", ["52-54-00-0a-01-08", "52:54:00:0A:01:08", "5254000a0108"])
def test_a_mac_in_either_separator_style_or_bare_is_taken(server, mac):
    status, _, body = server.get(f"/boot/{mac}.ipxe")
    assert status == 200 and body.startswith(b"#!ipxe") and b"r1n08" in body


def test_an_artifact_altered_after_a_good_read_is_gone_and_a_deleted_one_not_found(server):
    doc = server.rel.document
    altered, deleted = doc["manifests"]["r650"]["components"][2]["image"]["sha256"], \
        doc["manifests"]["r650"]["components"][3]["image"]["sha256"]
    for digest in (altered, deleted):
        assert server.get(f"/artifacts/sha256/{digest}")[0] == 200  # read (and verified) once
    p = server.ctx.artifacts.path(altered)
    p.chmod(0o644)
    p.write_bytes(p.read_bytes()[:-1] + b"!")
    server.ctx.artifacts.path(deleted).unlink()
    status, _, body = server.get(f"/artifacts/sha256/{altered}")
    assert status == 410 and b"altered" in body
    status, _, body = server.get(f"/artifacts/sha256/{deleted}")
    assert status == 404
