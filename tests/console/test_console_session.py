"""Console sessions without a browser (Flask's test client): idle timeout, a forged cookie, a
disabled account, and the matrix applied to a POST whatever the page offered."""

from __future__ import annotations

import re
import time

import pytest
from helpers import copy_spec

from provisioner.console.app import create_console_app
from provisioner.console.session import ConsoleSession
from provisioner.context import Context, Settings

BASE = "https://127.0.0.1"


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    root = tmp_path_factory.mktemp("session")
    ctx = Context(Settings(spec_dir=copy_spec(root / "spec"), data_dir=root / "data", actor="alice"))
    for name, role in (("vic", "viewer"), ("bob", "approver"), ("eve", "approver")):
        ctx.store.accounts.add(name, role, "test set-up", password=f"{name}-console-pw")
    return create_console_app(ctx), ctx


def signed_in(app, username: str, password: str):
    client = app.test_client()
    page = client.get("/console/login", base_url=BASE).text
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    r = client.post("/console/login", data={"username": username, "password": password, "csrf_token": token},
                    base_url=BASE)
    assert r.status_code == 303, r.text
    return client, token


def cookie_for(app, session: ConsoleSession) -> str:
    from provisioner.console.session import SessionCodec

    c = app.extensions["console"]
    key = (c.ctx.settings.data_dir / "console-session.key").read_bytes()
    return SessionCodec(key, c.policy).dump(session)


def test_a_session_idle_past_the_timeout_is_signed_out_and_told_why(app):
    app, ctx = app
    bob = ctx.store.accounts.get("bob")
    client, _ = signed_in(app, "bob", "bob-console-pw")  # creates the key
    stale = time.time() - 16 * 60
    client.set_cookie("__Host-console", cookie_for(app, ConsoleSession(bob.id, "password", stale, stale)),
                      domain="127.0.0.1")
    r = client.get("/console/", base_url=BASE, follow_redirects=True)
    assert "Sign in" in r.text and "signed out after 15 minutes without activity" in r.text


def test_a_forged_session_cookie_signs_nobody_in(app):
    app, ctx = app
    client, _ = signed_in(app, "vic", "vic-console-pw")
    good = client.get_cookie("__Host-console", domain="127.0.0.1").value
    client.set_cookie("__Host-console", good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB"),
                      domain="127.0.0.1")
    r = client.get("/console/", base_url=BASE)
    assert r.status_code == 302 and "/console/login" in r.headers["Location"]


def test_a_disabled_account_is_signed_out_at_its_next_request(app):
    app, ctx = app
    client, _ = signed_in(app, "eve", "eve-console-pw")
    assert client.get("/console/", base_url=BASE).status_code == 200
    ctx.store.accounts.disable("eve", "test", "left")
    r = client.get("/console/", base_url=BASE, follow_redirects=True)
    assert "your account is disabled or gone: signed out" in r.text


def test_a_viewers_post_is_refused_by_the_matrix_and_audited(app):
    app, ctx = app
    client, token = signed_in(app, "vic", "vic-console-pw")
    page = client.get("/console/blocks", base_url=BASE).text
    assert 'id="block-form"' not in page  # not offered ...
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    r = client.post("/console/blocks", data={"component": "bios", "version": "1.13.2", "reason": "x",
                                             "csrf_token": token}, base_url=BASE, follow_redirects=True)
    assert "vic (viewer) may not block; it needs the operator role" in r.text  # ... and refused if sent anyway
    assert ctx.store.active_blocks() == []
    assert [e["action"] for e in ctx.store.audit_entries()][-1] == "authz.refused"


def test_the_session_cookie_is_secure_httponly_and_strict(app):
    app, _ = app
    r = app.test_client().get("/console/login", base_url=BASE)
    cookie = r.headers["Set-Cookie"]
    assert cookie.startswith("__Host-console=") and "Secure" in cookie and "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie and "Path=/" in cookie


def _token(client, path: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', client.get(path, base_url=BASE).text).group(1)


def test_an_approver_cannot_confirm_the_unblock_they_requested(app):
    from provisioner import pipeline

    app, ctx = app
    ctx.store.accounts.add("carl", "approver", "test set-up", password="carl-console-pw")
    pipeline.block(ctx, "nic", "14.30.0", "link flaps, INC-7")
    client, _ = signed_in(app, "carl", "carl-console-pw")
    form = {"component": "nic", "version": "14.30.0", "reason": "vendor fix confirmed"}
    r = client.post("/console/blocks/unblock", data={**form, "step": "request",
                                                     "csrf_token": _token(client, "/console/blocks")},
                    base_url=BASE, follow_redirects=True)
    assert "another approver must confirm it" in r.text and "requested by <strong>carl</strong>" in r.text
    r = client.post("/console/blocks/unblock", data={**form, "step": "confirm",
                                                     "csrf_token": _token(client, "/console/blocks")},
                    base_url=BASE, follow_redirects=True)
    assert "carl requested the unblock of nic 14.30.0 and cannot confirm it; another approver must" in r.text
    assert [(b["component"], b["version"]) for b in ctx.store.active_blocks()] == [("nic", "14.30.0")]


def test_an_approval_is_withdrawn_with_a_comment_and_no_longer_counts(app):
    from pipeline_site import Site

    app, ctx = app
    rid = Site(ctx.settings.spec_dir, ctx.settings.data_dir, ctx).build(author="alice")
    client, _ = signed_in(app, "bob", "bob-console-pw")
    page = f"/console/releases/{rid}"
    r = client.post(page + "/approve", data={"comment": "looks right", "csrf_token": _token(client, page)},
                    base_url=BASE, follow_redirects=True)
    assert "approved by bob" in r.text and [a["approver"] for a in ctx.store.approvals(rid)] == ["bob"]
    assert "Withdraw my approval" in r.text
    r = client.post(page + "/approve", data={"comment": "saw a flaky NIC", "withdraw": "1",
                                             "csrf_token": _token(client, page)}, base_url=BASE, follow_redirects=True)
    assert "approval withdrawn" in r.text and ctx.store.approvals(rid) == []
    assert ctx.store.audit_entries()[-1]["details"]["reason"] == "saw a flaky NIC"


def test_over_plain_http_the_sign_in_page_says_to_serve_it_over_tls(app):
    app, _ = app
    r = app.test_client().get("/console/login", base_url="http://127.0.0.1")
    assert "signs in over HTTPS only" in r.text and "--tls-cert" in r.text


def test_a_sign_on_begun_by_one_server_process_is_finished_by_another(tmp_path, oidc_provider):
    """`provisioner api --processes N`: the provider's redirect may land on any of the processes.
    The pending sign-on travels sealed in the browser's cookie; a changed cookie or another
    browser (no cookie) is refused."""
    import requests
    from test_accounts_oidc import CLIENT_ID, SECRET

    from provisioner.auth.oidc import OidcClient

    ctx = Context(Settings(spec_dir=copy_spec(tmp_path / "spec"), data_dir=tmp_path / "data", actor="alice"))
    ctx.store.accounts.add("vic", "viewer", "test set-up")
    oidc = OidcClient(oidc_provider.issuer, CLIENT_ID, SECRET, f"{BASE}/console/oidc/callback")
    first, second = (create_console_app(ctx, oidc=oidc) for _ in range(2))
    oidc_provider.user = {"sub": "00u-vic-2", "preferred_username": "vic"}

    def begin(client):
        r = client.get("/console/login/oidc", base_url=BASE)
        assert r.status_code == 303
        at_provider = requests.get(r.headers["Location"], allow_redirects=False, timeout=10)
        return at_provider.headers["Location"].removeprefix(BASE)  # the callback, with code and state

    browser = first.test_client()
    callback = begin(browser)
    sealed = browser.get_cookie("console-oidc", domain="127.0.0.1", path="/console/oidc").value
    assert "verifier" not in sealed and "state" not in sealed  # sealed, not merely signed
    other_browser = second.test_client()
    assert other_browser.get(callback, base_url=BASE).status_code == 401
    forged = second.test_client()
    forged.set_cookie("console-oidc", sealed[:-4] + "AAAA", domain="127.0.0.1", path="/console/oidc")
    assert forged.get(callback, base_url=BASE).status_code == 401
    finisher = second.test_client()  # the same browser, its next request served by the other process
    finisher.set_cookie("console-oidc", sealed, domain="127.0.0.1", path="/console/oidc")
    r = finisher.get(callback, base_url=BASE)
    assert r.status_code == 200, r.text
    assert "vic <small>(viewer)</small>" in finisher.get("/console/", base_url=BASE).text  # signed in
