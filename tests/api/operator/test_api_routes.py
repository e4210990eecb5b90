"""The operator API as a client sees it: a rollout started by POST (202) and followed live over
Server-Sent Events with Last-Event-ID resume, sessions, problem details, the OpenAPI document."""

from __future__ import annotations

import http.client
import json
import re
import time

from provisioner.api.operator.routes import ROUTES


def sse(api, path: str, token: str, last_event_id: str | None = None) -> list[dict]:
    """Every event of a stream until it ends: [{"id", "event", "data"}]."""
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=300)
    headers = {"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    conn.request("GET", path, headers=headers)
    r = conn.getresponse()
    assert r.status == 200 and r.getheader("Content-Type").startswith("text/event-stream")
    events, current = [], {}
    for raw in r:  # WHATWG HTML §9.2.6: fields until a blank line dispatches the event
        line = raw.decode().rstrip("\n")
        if not line:
            if "event" in current:
                events.append(current)
            current = {}
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(": ")
        current[name] = json.loads(value) if name == "data" else value
    conn.close()
    return events


def test_apply_answers_202_with_the_rollout_and_its_events_stream_live_and_resume(api):
    assert api.call("PUT", "/api/v1/environments/staging/release", "operator1", {"release": api.r1})[0] == 200
    status, headers, started = api.call("POST", "/api/v1/environments/staging/rollouts", "operator1")
    assert status == 202, started
    rid = started["rollout"]
    assert started["events"] == f"/api/v1/rollouts/{rid}/events"
    events = sse(api, started["events"], api.tokens["viewer1"])
    steps = [e for e in events if e["event"] == "step"]
    assert steps and events[-1]["event"] == "end"
    assert events[-1]["data"]["status"] == "done", events[-1]
    assert [int(e["id"]) for e in steps] == list(range(1, len(steps) + 1))
    assert {e["data"]["node"] for e in steps} == {"s1n01"}
    # a client reconnecting with Last-Event-ID gets exactly the steps after it
    again = sse(api, started["events"], api.tokens["viewer1"], last_event_id=steps[1]["id"])
    assert [e["id"] for e in again if e["event"] == "step"] == [e["id"] for e in steps[2:]]
    shown = api.call("GET", f"/api/v1/rollouts/{rid}", "viewer1")[2]
    assert (shown["status"], [n["node"] for n in shown["nodes"]]) == ("done", ["s1n01"])
    started_by = [e for e in api.site.ctx.store.audit_entries() if e["action"] == "env.point"
                  or e["action"] == "env.promote"][-1]
    assert started_by["actor"] == "operator1" and started_by["auth_method"] == "token"


def test_a_password_session_is_a_strict_httponly_cookie_that_authenticates(api):
    api.account("sam", "viewer")
    status, headers, answer = api.call("POST", "/api/v1/session",
                                       body={"username": "SAM ", "password": "correct horse battery"})
    assert status == 201, answer
    cookie = headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    session = cookie.split(";")[0]
    status, _, me = api.call("GET", "/api/v1/whoami", headers={"Cookie": session})
    assert (status, me["username"], me["auth_method"]) == (200, "sam", "password")
    status, _, answer = api.call("POST", "/api/v1/session", body={"username": "sam", "password": "wrong"})
    assert (status, answer["status"]) == (401, 401)
    forged = session[:-4] + ("AAAA" if not session.endswith("AAAA") else "BBBB")
    assert api.call("GET", "/api/v1/whoami", headers={"Cookie": forged})[0] == 401


def test_errors_are_problem_details_with_the_error_trees_status(api):
    status, headers, answer = api.call("GET", "/api/v1/releases/ffffffffffff", "viewer1")
    assert status == 404 and headers["content-type"] == "application/problem+json"
    assert set(answer) >= {"type", "title", "status", "detail"} and answer["status"] == 404
    status, _, answer = api.call("GET", "/api/v1/environments/prod/plan", "viewer1")
    assert status == 404 and "did you mean 'production'" in answer["detail"]
    status, _, answer = api.call("POST", "/api/v1/blocks", "operator1", {"component": "bios"})
    assert status == 400 and "'version'" in answer["detail"]


def test_the_openapi_document_lists_every_route_of_the_table(api):
    status, _, doc = api.call("GET", "/api/v1/openapi.json", "viewer1")
    assert status == 200 and doc["openapi"].startswith("3.1")
    listed = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    for r in ROUTES:
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", r.path)  # a Flask rule's <int:rid> is OpenAPI's {rid}
        assert (r.method, path) in listed
    assert doc["paths"]["/api/v1/releases/{ref}/approvals"]["post"]["x-authorisation"] == "approve"


def test_status_reads_every_node_from_the_store(api):
    status, _, answer = api.call("GET", "/api/v1/status", "viewer1")
    assert status == 200
    assert {r["node"] for r in answer["nodes"]} == {"s1n01", "r1n01"}


def test_status_shows_a_change_in_the_store_on_a_later_poll(api):
    def firmware_of_s1n01():
        _, _, answer = api.call("GET", "/api/v1/status?environment=staging", "viewer1")
        return next(r for r in answer["nodes"] if r["node"] == "s1n01")["components"]["bios"]["observed"]

    before = firmware_of_s1n01()
    api.site.ctx.store.update_node("s1n01", observed={"bios": "9.9.9-polled"})
    deadline = time.monotonic() + 60
    while firmware_of_s1n01() != "9.9.9-polled":
        assert time.monotonic() < deadline, f"status still says {before}"
        time.sleep(0.2)
