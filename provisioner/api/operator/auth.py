"""Who is calling the operator API: a Bearer API token, or the session cookie a password sign-in set.

Every route but /healthz and POST /api/v1/session authenticates here. The session cookie is
signed (itsdangerous, with a key file in the data directory, 0600), carries only the account id
and expires after `SESSION_SECONDS`; the account is looked up again on every request, so a
disabled account is refused at once. Cookie attributes per RFC 6265bis: Secure, HttpOnly,
SameSite=Strict (the web console is same-site; no cross-site request carries it).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from flask import Request
from itsdangerous import BadSignature, URLSafeTimedSerializer

from provisioner.auth.authenticate import with_token
from provisioner.auth.identity import Actor, Method
from provisioner.errors import NotAuthenticated
from provisioner.store.accounts import Accounts

from .cache import TokenCache

COOKIE = "provisioner_session"
SESSION_SECONDS = 12 * 3600


def session_key(data_dir: Path) -> bytes:
    """The key that signs session cookies: made once, kept 0600 beside the store."""
    path = Path(data_dir) / "operator-session.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return path.read_text().strip().encode()


class Sessions:
    def __init__(self, key: bytes):
        self.signer = URLSafeTimedSerializer(key, salt="provisioner-operator-session")

    def issue(self, actor: Actor) -> str:
        return self.signer.dumps({"a": actor.account.id, "n": secrets.token_hex(8)})

    def account_id(self, cookie: str) -> int:
        try:
            return int(self.signer.loads(cookie, max_age=SESSION_SECONDS)["a"])
        except (BadSignature, KeyError, TypeError, ValueError):
            raise NotAuthenticated("session expired or not valid; sign in again (POST /api/v1/session)") from None


def client_address(request: Request) -> str:
    return (request.remote_addr or "unknown")[:64]


def authenticate(request: Request, accounts: Accounts, sessions: Sessions, tokens: TokenCache | None = None) -> Actor:
    """The Actor behind a request (NotAuthenticated, HTTP 401, when there is none). A GET may be
    answered for a token's account remembered for a moment (cache.py); a write never is."""
    client = client_address(request)
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    if scheme:
        if scheme.lower() != "bearer":
            raise NotAuthenticated(f"unsupported authorization scheme {scheme[:20]!r}; use Bearer with an API token")
        safe = tokens is not None and request.method in ("GET", "HEAD")
        account = tokens.get(credentials.strip()) if safe else None
        if account is not None:
            return Actor.of_account(account, Method.TOKEN, client)
        actor = with_token(accounts, credentials, client=client)
        if tokens is not None:
            tokens.put(credentials.strip(), actor.account)
        return actor
    cookie = request.cookies.get(COOKIE)
    if cookie:
        account = accounts.by_id(Sessions.account_id(sessions, cookie))
        if account is None or account.disabled:
            raise NotAuthenticated("the session's account is disabled; sign in again")
        return Actor.of_account(account, Method.PASSWORD, client)
    raise NotAuthenticated("authentication required: an API token (Authorization: Bearer ...) or a session "
                           "(POST /api/v1/session)")
