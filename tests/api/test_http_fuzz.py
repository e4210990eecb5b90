"""Hypothesis against the boot routes over real HTTP: random paths, headers and bodies (valid
tokens included) never get a 500, never log a traceback, and leave the store intact."""

from __future__ import annotations

import json
import logging
import urllib.parse

import pytest
from helpers import pinned
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FUZZ = settings(max_examples=120, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
EVENTS = ["started", "progress", "installed", "flashed", "failed", "booted", "held", "x", ""]

segment = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20)
report_keys = st.sampled_from(["event", "release", "images", "firmware", "error", "message", "step", "percent"])
reports = st.dictionaries(report_keys, json_values, max_size=5)
header_value = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=60)
headers = st.dictionaries(st.sampled_from(["Range", "If-Range", "If-None-Match", "Authorization", "Content-Type",
                                           "Content-Encoding", "Transfer-Encoding", "Expect", "X-Any"]),
                          header_value, max_size=4)


@pytest.fixture(scope="module")
def fuzz(server):
    """The shared server, a node in a flash the rollout started (so bodies reach the report
    models with a valid token), and a log watcher for tracebacks."""
    server.ctx.store.update_node("r2n08", state="flashing", observed={**pinned(server.rel, "r650"), "bios": "1.0"})
    server.ctx.store.boots.expect("r2n08", "flash", server.rel.id)
    token = server.token("52-54-00-0a-02-08")
    seen: list[logging.LogRecord] = []

    class Watch(logging.Handler):
        def emit(self, record):
            if record.exc_info or record.levelno >= logging.ERROR:
                seen.append(record)

    handler = Watch()
    logging.getLogger().addHandler(handler)
    yield server, token, seen
    logging.getLogger().removeHandler(handler)
    checked, problems = server.ctx.store.verify_audit()
    assert not problems and checked > 0


def q(text: str) -> str:
    return urllib.parse.quote(text, safe="")


@FUZZ
@given(st.sampled_from(["/boot/{}.ipxe", "/boot.ipxe?mac={}", "/artifacts/sha256/{}", "/flasher/{}.json?token={}",
                        "/api/v1/callback/{}", "/api/v1/callback/r2n08/{}", "/{}", "/boot/{}"]),
       segment, st.sampled_from(["GET", "HEAD", "POST", "PUT", "OPTIONS"]), headers)
def test_random_paths_and_headers_never_get_a_500(fuzz, template, text, method, hdrs):
    server, _, seen = fuzz
    status, _, _ = server.request(method, template.format(q(text), q(text)), headers=hdrs)
    # RFC 9112 §6.1: a transfer coding the server does not know is a 501, the one 5xx it may send
    assert status < 500 or (status == 501 and "Transfer-Encoding" in hdrs), status
    assert not seen, [r.getMessage() for r in seen]


@FUZZ
@given(st.sampled_from(EVENTS), reports | json_values, st.booleans())
def test_random_report_bodies_with_a_valid_token_never_get_a_500(fuzz, event, body, with_token):
    server, token, seen = fuzz
    path = f"/api/v1/callback/r2n08/{event}" if event else "/api/v1/callback/r2n08"
    status, _, text = server.post(path, json.dumps(body).encode(), token if with_token else None)
    assert status < 500 and not seen, (text, [r.getMessage() for r in seen])


@FUZZ
@given(st.binary(max_size=300), st.sampled_from(["/api/v1/callback/r2n08/progress", "/api/v1/callback/r2n08"]))
def test_random_bytes_as_a_body_never_get_a_500(fuzz, raw, path):
    server, token, seen = fuzz
    status, _, _ = server.post(path, raw, token)
    assert status < 500 and not seen, [r.getMessage() for r in seen]
