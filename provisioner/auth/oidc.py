"""Single sign-on with OpenID Connect: the authorization-code flow (with PKCE), ending in an Actor.

authlib's OAuth2Session builds the authorization URL and exchanges the code (RFC 6749 §4.1,
PKCE RFC 7636 S256); the ID token's signature is checked against the provider's JWKS and its
claims (iss, aud, exp, nonce) with joserfc (OpenID Connect Core 1.0 §3.1.3.7).

Mapping to an account: accounts are created by an admin (`provisioner user add NAME --role …
--no-password`); SSO never creates one. The first sign-in binds the provider's (issuer, sub) to
the account named by the `preferred_username` claim, normalised, if that account is not bound
yet; from then on only (issuer, sub) is trusted, so a renamed or reused name at the provider
cannot take over another account.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass

import requests
from authlib.common.errors import AuthlibBaseError
from authlib.integrations.requests_client import OAuth2Session
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from provisioner.auth.identity import Actor, Method, normalise_username
from provisioner.errors import NotAuthenticated
from provisioner.store.accounts import Accounts

TIMEOUT = 10  # seconds, per request to the provider


@dataclass(frozen=True)
class OidcClient:
    """The relying party's registration at one provider."""

    issuer: str
    client_id: str
    client_secret: str
    redirect_uri: str
    scope: str = "openid profile"


@dataclass(frozen=True)
class PendingLogin:
    """What the browser's round trip must bring back: kept server-side between begin and complete."""

    url: str
    state: str
    nonce: str
    code_verifier: str


class OidcLogin:
    def __init__(self, client: OidcClient, accounts: Accounts):
        self.client, self.accounts = client, accounts
        self._meta: dict | None = None

    def metadata(self) -> dict:
        """The provider's discovery document (OpenID Connect Discovery 1.0 §4)."""
        if self._meta is None:
            url = self.client.issuer.rstrip("/") + "/.well-known/openid-configuration"
            try:
                r = requests.get(url, timeout=TIMEOUT)
                r.raise_for_status()
                meta = r.json()
            except (requests.RequestException, ValueError) as e:
                raise NotAuthenticated(f"the OIDC provider at {self.client.issuer} cannot be reached: {e}") from None
            if meta.get("issuer") != self.client.issuer:
                raise NotAuthenticated(f"the OIDC provider says it is {meta.get('issuer')!r}, not {self.client.issuer!r}")
            self._meta = meta
        return self._meta

    def _session(self, state: str | None = None) -> OAuth2Session:
        c = self.client
        return OAuth2Session(c.client_id, c.client_secret, scope=c.scope, redirect_uri=c.redirect_uri,
                             state=state, code_challenge_method="S256")

    def begin(self) -> PendingLogin:
        """Where to send the browser, and what to remember until it comes back."""
        verifier, nonce = secrets.token_urlsafe(48), secrets.token_urlsafe(24)
        url, state = self._session().create_authorization_url(self.metadata()["authorization_endpoint"],
                                                              nonce=nonce, code_verifier=verifier)
        return PendingLogin(url, state, nonce, verifier)

    def complete(self, pending: PendingLogin, callback_url: str, client: str | None = None) -> Actor:
        """Exchange the code the browser brought back for tokens, check the ID token, find the account."""
        meta = self.metadata()
        try:
            token = self._session(pending.state).fetch_token(
                meta["token_endpoint"], authorization_response=callback_url, code_verifier=pending.code_verifier,
                timeout=TIMEOUT)
        except (AuthlibBaseError, requests.RequestException, ValueError) as e:  # state mismatch, invalid_grant, ...
            raise NotAuthenticated(f"OIDC sign-in failed at the token exchange: {e}") from None
        claims = self.verify_id_token(token.get("id_token"), pending.nonce)
        return Actor.of_account(self.account_for(claims), Method.OIDC, client)

    def verify_id_token(self, id_token: str | None, nonce: str) -> dict:
        if not id_token:
            raise NotAuthenticated("the OIDC provider returned no ID token (is the `openid` scope granted?)")
        try:
            jwks = requests.get(self.metadata()["jwks_uri"], timeout=TIMEOUT).json()
            decoded = jwt.decode(id_token, KeySet.import_key_set(jwks), algorithms=["RS256", "ES256", "EdDSA"])
            jwt.JWTClaimsRegistry(
                leeway=60, iss={"essential": True, "value": self.client.issuer},
                aud={"essential": True, "value": self.client.client_id}, sub={"essential": True},
                exp={"essential": True}, nonce={"essential": True, "value": nonce},
            ).validate(decoded.claims)
        except (JoseError, ValueError, requests.RequestException, json.JSONDecodeError) as e:
            raise NotAuthenticated(f"the OIDC ID token was refused: {e}") from None
        return decoded.claims

    def account_for(self, claims: dict):
        issuer, sub = self.client.issuer, str(claims["sub"])
        account = self.accounts.by_oidc(issuer, sub)
        if account is None:
            raw = claims.get("preferred_username")
            if not raw:
                raise NotAuthenticated(f"no account is bound to {sub!r} at {issuer} and the provider sent no "
                                       f"preferred_username to bind one")
            name = normalise_username(raw)
            account = self.accounts.get(name)
            if account is None:
                raise NotAuthenticated(f"no account {name!r}; an admin must `provisioner user add {name} --role …` "
                                       f"before its first sign-in")
            if not self.accounts.bind_oidc(account.id, issuer, sub, f"{name} (oidc first sign-in)"):
                raise NotAuthenticated(f"account {name!r} is already bound to another identity at a provider")
        if account.disabled:
            raise NotAuthenticated(f"account {account.username!r} is disabled")
        return account
