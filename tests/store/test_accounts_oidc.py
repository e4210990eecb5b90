"""Single sign-on: the authorization-code flow against an OpenID provider the test starts on loopback.

The provider is small but honest: discovery, an authorization endpoint that signs in whoever the
test says is at the browser, a token endpoint that checks the client's secret, the redirect URI
and the PKCE verifier (RFC 7636 §4.6), and RS256 ID tokens with the nonce, served with its JWKS.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import threading
import time
from urllib.parse import parse_qs, urlencode, urlparse

import pytest
import requests
from flask import Flask, jsonify, redirect, request
from joserfc import jwt
from joserfc.jwk import RSAKey
from werkzeug.serving import make_server

from provisioner.auth.identity import Method
from provisioner.auth.oidc import OidcClient, OidcLogin
from provisioner.errors import NotAuthenticated
from provisioner.store.db import Database
from provisioner.store.repo import Store

CLIENT_ID, SECRET, REDIRECT = "provisioner", "s3cret-of-the-client", "https://provisioner.example/oidc/callback"


class Provider:
    def __init__(self):
        self.key = RSAKey.generate_key(2048, parameters={"kid": "k1", "use": "sig", "alg": "RS256"})
        self.codes: dict[str, dict] = {}
        self.user = {"sub": "00u1", "preferred_username": "Bob"}  # who is at the browser
        self.tamper_nonce = False
        app = Flask("tiny-oidc")
        app.add_url_rule("/.well-known/openid-configuration", view_func=self.discovery)
        app.add_url_rule("/authorize", view_func=self.authorize)
        app.add_url_rule("/token", view_func=self.token, methods=["POST"])
        app.add_url_rule("/jwks", view_func=lambda: jsonify({"keys": [self.key.as_dict(private=False)]}))
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.issuer = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def discovery(self):
        return jsonify({"issuer": self.issuer, "authorization_endpoint": f"{self.issuer}/authorize",
                        "token_endpoint": f"{self.issuer}/token", "jwks_uri": f"{self.issuer}/jwks",
                        "response_types_supported": ["code"], "id_token_signing_alg_values_supported": ["RS256"],
                        "code_challenge_methods_supported": ["S256"]})

    def authorize(self):
        q = request.args
        assert q["response_type"] == "code" and q["client_id"] == CLIENT_ID and q["code_challenge_method"] == "S256"
        code = secrets.token_urlsafe(16)
        self.codes[code] = {"challenge": q["code_challenge"], "nonce": q["nonce"], "redirect_uri": q["redirect_uri"],
                            "user": dict(self.user)}
        return redirect(f"{q['redirect_uri']}?{urlencode({'code': code, 'state': q['state']})}")

    def token(self):
        user, _, pw = base64.b64decode(request.headers.get("Authorization", "Basic ")[6:]).decode().partition(":")
        if (user, pw) != (CLIENT_ID, SECRET):
            return jsonify({"error": "invalid_client"}), 401
        grant = self.codes.pop(request.form["code"], None)
        verifier = request.form.get("code_verifier", "")
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        if grant is None or grant["challenge"] != challenge or grant["redirect_uri"] != request.form["redirect_uri"]:
            return jsonify({"error": "invalid_grant"}), 400
        now = int(time.time())
        claims = {"iss": self.issuer, "aud": CLIENT_ID, "iat": now, "exp": now + 300, **grant["user"],
                  "nonce": "forged" if self.tamper_nonce else grant["nonce"]}
        id_token = jwt.encode({"alg": "RS256", "kid": "k1"}, claims, self.key)
        return jsonify({"access_token": secrets.token_urlsafe(16), "token_type": "Bearer", "expires_in": 300,
                        "id_token": id_token})


@pytest.fixture(scope="module")
def provider():
    p = Provider()
    yield p
    p.server.shutdown()


@pytest.fixture
def login(provider, tmp_path):
    provider.user, provider.tamper_nonce = {"sub": "00u1", "preferred_username": "Bob"}, False
    store = Store(Database(f"sqlite:///{tmp_path / 'provisioner.db'}"))
    return OidcLogin(OidcClient(provider.issuer, CLIENT_ID, SECRET, REDIRECT), store.accounts), store


def browser(pending) -> str:
    """What the browser does: follow the authorization URL to the provider, land on our callback."""
    r = requests.get(pending.url, allow_redirects=False, timeout=10)
    assert r.status_code == 302 and r.headers["Location"].startswith(REDIRECT)
    return r.headers["Location"]


def test_the_first_sign_in_binds_the_provider_identity_to_the_named_account(login):
    oidc, store = login
    store.accounts.add("bob", "approver", "root")
    pending = oidc.begin()
    assert parse_qs(urlparse(pending.url).query)["code_challenge_method"] == ["S256"]
    who = oidc.complete(pending, browser(pending), client="10.1.2.3")
    assert (who.name, who.method, who.authenticated) == ("bob", Method.OIDC, True)
    assert [e["action"] for e in store.audit_entries()] == ["account.add", "account.oidc"]


def test_later_sign_ins_trust_the_subject_not_the_name(login, provider):
    oidc, store = login
    store.accounts.add("bob", "approver", "root")
    store.accounts.add("mallory", "viewer", "root")
    first = oidc.begin()
    oidc.complete(first, browser(first))
    provider.user = {"sub": "00u1", "preferred_username": "mallory"}  # renamed at the provider
    again = oidc.begin()
    assert oidc.complete(again, browser(again)).name == "bob"
    provider.user = {"sub": "00u9", "preferred_username": "bob"}  # another person claiming the name
    other = oidc.begin()
    with pytest.raises(NotAuthenticated, match="account 'bob' is already bound to another identity"):
        oidc.complete(other, browser(other))


def test_a_person_without_an_account_is_not_let_in(login):
    oidc, _ = login
    pending = oidc.begin()
    with pytest.raises(NotAuthenticated, match="no account 'bob'; an admin must `provisioner user add bob"):
        oidc.complete(pending, browser(pending))


def test_a_replayed_state_a_wrong_client_secret_or_a_wrong_nonce_is_refused(login, provider):
    oidc, store = login
    store.accounts.add("bob", "approver", "root")
    a, b = oidc.begin(), oidc.begin()
    with pytest.raises(NotAuthenticated, match="token exchange"):
        oidc.complete(a, browser(b))  # the callback of another login (CSRF, RFC 6749 §10.12)
    wrong = OidcLogin(OidcClient(provider.issuer, CLIENT_ID, "not-the-secret", REDIRECT), store.accounts)
    d = wrong.begin()
    with pytest.raises(NotAuthenticated, match="token exchange failed|invalid_client"):
        wrong.complete(d, browser(d))
    provider.tamper_nonce = True
    c = oidc.begin()
    with pytest.raises(NotAuthenticated, match="the OIDC ID token was refused"):
        oidc.complete(c, browser(c))
