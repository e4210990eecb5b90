"""Issue 11's bypasses, tried through the operator API: each one refused, and the refusal audited."""

from __future__ import annotations

from provisioner.store.models import ApprovalRow
from provisioner.store.repo import now


def audit_of(api, action: str, subject: str | None = None) -> list[dict]:
    return [e for e in api.site.ctx.store.audit_entries() if e["action"] == action
            and (subject is None or e["subject"] == subject)]


def test_the_author_cannot_approve_their_release_and_the_refusal_is_audited(api):
    status, _, answer = api.call("POST", f"/api/v1/releases/{api.r1}/approvals", "author1", {"comment": "mine"})
    assert status == 409, answer
    assert "author1 built this release" in answer["detail"] or "author1 built release" in answer["detail"]
    refused = audit_of(api, "authz.refused", api.r1)
    assert refused and refused[-1]["actor"] == "author1" and refused[-1]["auth_method"] == "token"
    _, _, gate = api.call("GET", f"/api/v1/releases/{api.r1}/gate", "viewer1")
    assert "author1" not in gate["facts"]["approvers"]


def test_an_approval_row_written_straight_into_the_table_does_not_count(api):
    admin = api.site.ctx.store.accounts.get(api.account("admin1", "admin"))
    with api.site.ctx.store.db.session() as s:  # behind the store's back: no audit entry
        s.add(ApprovalRow(release_id=api.r1, approver="mallory", at=now(), comment="trust me",
                          account_id=admin.id))
    status, _, gate = api.call("GET", f"/api/v1/releases/{api.r1}/gate", "viewer1")
    assert status == 200
    assert "mallory" not in gate["facts"]["approvers"]
    assert not any("mallory" in a for a in gate["facts"]["approvers"])


def test_an_approval_through_the_api_counts_and_can_be_withdrawn(api):
    who = api.account("approver2", "approver")
    status, _, answer = api.call("POST", f"/api/v1/releases/{api.r1}/approvals", who, {"comment": "soak clean"})
    assert (status, answer["changed"]) == (201, True), answer
    entry = audit_of(api, "release.approve", api.r1)[-1]
    assert (entry["actor"], entry["auth_method"], entry["client"]) == (who, "token", "127.0.0.1")
    assert who in api.call("GET", f"/api/v1/releases/{api.r1}/gate", "viewer1")[2]["facts"]["approvers"]
    status, _, answer = api.call("DELETE", f"/api/v1/releases/{api.r1}/approvals", who, {"comment": "saw errors"})
    assert (status, answer["changed"], answer["withdrawn"]) == (200, True, True), answer
    assert who not in api.call("GET", f"/api/v1/releases/{api.r1}/gate", "viewer1")[2]["facts"]["approvers"]


def test_unblocking_needs_a_second_approver(api):
    version = {"component": "bios", "version": "0.0.2-two-person", "reason": "INC-1 boot loop"}
    assert api.call("POST", "/api/v1/blocks", "operator1", version)[0] == 201
    # confirming with no request: refused
    status, _, answer = api.call("POST", "/api/v1/unblock-requests/confirm", "approver1", version)
    assert status == 409 and "no pending request" in answer["detail"], answer
    assert api.call("POST", "/api/v1/unblock-requests", "approver1", {**version, "reason": "fixed"})[0] == 201
    # the requester cannot confirm their own request
    status, _, answer = api.call("POST", "/api/v1/unblock-requests/confirm", "approver1", version)
    assert status == 409 and "requested" in answer["detail"], answer
    assert audit_of(api, "authz.refused", "bios 0.0.2-two-person")[-1]["actor"] == "approver1"
    blocks = api.call("GET", "/api/v1/blocks", "viewer1")[2]
    assert any(b["version"] == "0.0.2-two-person" for b in blocks["blocks"]), "lifted by one person"
    assert [r["requested_by"] for r in blocks["unblock_requests"] if r["version"] == "0.0.2-two-person"] == \
        ["approver1"]
    # an operator may request but not confirm
    assert api.call("POST", "/api/v1/unblock-requests/confirm", "operator1", version)[0] == 403
    # a second approver confirms: lifted, and the request is gone
    status, _, answer = api.call("POST", "/api/v1/unblock-requests/confirm", "admin1", version)
    assert (status, answer["lifted"]) == (200, 1), answer
    blocks = api.call("GET", "/api/v1/blocks", "viewer1")[2]
    assert not any(b["version"] == "0.0.2-two-person" for b in blocks["blocks"])
    assert not any(r["version"] == "0.0.2-two-person" for r in blocks["unblock_requests"])
    lifted = audit_of(api, "firmware.unblock", "bios 0.0.2-two-person")[-1]
    assert lifted["actor"] == "admin1" and "requested by approver1" in lifted["details"]["reason"]


def test_rollback_to_a_release_never_active_nor_through_the_gate_is_refused(api):
    status, _, answer = api.call("POST", "/api/v1/environments/production/rollback", "admin1", {"to": api.r1})
    assert status == 409, answer
    assert "never active in production" in answer["detail"] and "staging gate" in answer["detail"]
    assert api.site.ctx.store.current_release_id("production") is None
    assert audit_of(api, "authz.refused", "production")[-1]["actor"] == "admin1"
    assert api.call("GET", "/api/v1/rollouts?environment=production", "viewer1")[2] == []


def test_promote_to_production_without_the_gate_is_refused(api):
    status, _, answer = api.call("PUT", "/api/v1/environments/production/release", "admin1", {"release": api.r1})
    assert status == 409 and "has not passed the staging gate" in answer["detail"], answer
    assert api.site.ctx.store.current_release_id("production") is None
