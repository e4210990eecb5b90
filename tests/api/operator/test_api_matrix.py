"""The authorisation matrix, cell by cell, over the API: every role asks for every action through
its route, with a real token over loopback HTTP; 403 exactly where the matrix says no.

The expected table is written out here (as in the README), not read from policy/authz.py, so a
change to the code's table that the README does not make fails here.
"""

from __future__ import annotations

import pytest
from operator_api import ROLES

# action -> the roles allowed (the README's matrix)
ALLOWED = {
    "view": {"viewer", "operator", "approver", "admin"},
    "build": {"operator", "approver", "admin"},
    "promote to staging": {"operator", "approver", "admin"},
    "apply": {"operator", "approver", "admin"},
    "approve": {"approver", "admin"},
    "promote to production": {"operator", "approver", "admin"},
    "block": {"operator", "approver", "admin"},
    "request an unblock": {"operator", "approver", "admin"},
    "confirm an unblock": {"approver", "admin"},
    "roll back to previous": {"operator", "approver", "admin"},
    "roll back to another release": {"operator", "approver", "admin"},
    "manage users": {"admin"},
}
BLOCKED = {"component": "bios", "version": "0.0.1-matrix", "reason": "matrix test"}


def request_for(action: str, api, role: str):
    """(method, path, body) asking for `action` through its route."""
    return {
        "view": ("GET", "/api/v1/status", None),
        "build": ("POST", "/api/v1/releases", None),
        "promote to staging": ("PUT", "/api/v1/environments/staging/release", {"release": api.r1}),
        # production points at no release yet: past the matrix, the operation answers 404
        "apply": ("POST", "/api/v1/environments/production/rollouts", None),
        "approve": ("POST", f"/api/v1/releases/{api.r1}/approvals", {"comment": f"as {role}"}),
        "promote to production": ("PUT", "/api/v1/environments/production/release", {"release": api.r1}),
        "block": ("POST", "/api/v1/blocks", BLOCKED),
        "request an unblock": ("POST", "/api/v1/unblock-requests", BLOCKED),
        "confirm an unblock": ("POST", "/api/v1/unblock-requests/confirm", BLOCKED),
        "roll back to previous": ("POST", "/api/v1/environments/production/rollback", {}),
        "roll back to another release": ("POST", "/api/v1/environments/production/rollback", {"to": api.r1}),
        "manage users": ("GET", "/api/v1/accounts", None),
    }[action]


@pytest.mark.parametrize("action", list(ALLOWED))
@pytest.mark.parametrize("role", ROLES)
def test_each_role_may_do_exactly_what_the_matrix_says(api, role, action):
    method, path, body = request_for(action, api, role)
    status, headers, answer = api.call(method, path, f"{role}1", body)
    assert status < 500 and status != 401, (status, answer)
    if role in ALLOWED[action]:
        assert status != 403, (role, action, answer)
    else:
        assert status == 403, (role, action, status, answer)
        assert headers["content-type"] == "application/problem+json"
        assert answer["status"] == 403 and f"may not {action}" in answer["detail"]


def test_every_refusal_by_role_is_in_the_audit_log_with_who_how_and_from_where(api):
    api.call("GET", "/api/v1/accounts", "operator1")
    refused = [e for e in api.site.ctx.store.audit_entries() if e["action"] == "authz.refused"
               and e["actor"] == "operator1" and e["details"]["action"] == "manage users"]
    assert refused, "the refused call is not audited"
    assert (refused[-1]["auth_method"], refused[-1]["client"]) == ("token", "127.0.0.1")
    assert refused[-1]["account_id"] == api.site.ctx.store.accounts.get("operator1").id


def test_no_route_answers_without_authentication(api):
    for method, path, _ in [request_for(a, api, "viewer") for a in ALLOWED]:
        status, headers, answer = api.call(method, path)
        assert status == 401, (method, path, status)
        assert headers["www-authenticate"].startswith("Bearer")
    status, _, answer = api.call("GET", "/api/v1/status", headers={"Authorization": "Bearer prv_not-a-token"})
    assert (status, answer["title"]) == (401, "Unauthorized")
