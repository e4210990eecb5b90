"""Console sign-in sessions: a signed cookie, an idle timeout, a CSRF token, and the security headers.

The cookie holds only the account id, how it signed in, when, when it was last active and the
session's CSRF token, signed with a key kept outside the database (DATA/console-session.key,
0600). It is `Secure`, `HttpOnly` and `SameSite=Strict` (RFC 6265bis §4.1.2.7), named with the
`__Host-` prefix when Secure so no subdomain can plant one. Every request reads the account
again, so a disabled account or a changed role takes effect at once.

CSRF (OWASP's synchroniser token): every POST carries the session's token in a hidden field
(or the `X-CSRF-Token` header), compared in constant time; without it the POST is refused with
403 before anything runs. SameSite=Strict is a second wall, not the only one.
"""

from __future__ import annotations

import base64
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from itsdangerous import BadSignature, URLSafeSerializer

KEY_FILE = "console-session.key"

# No inline script or style anywhere: every script and stylesheet is a file this blueprint serves.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "font-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")


def session_key(data_dir: Path) -> bytes:
    """The signing key: created once, 0600, beside the store (never in it)."""
    path = data_dir / KEY_FILE
    try:
        return path.read_bytes()
    except FileNotFoundError:
        data_dir.mkdir(parents=True, exist_ok=True)
        key = secrets.token_bytes(32)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first
            return path.read_bytes()
        with os.fdopen(fd, "wb") as f:
            f.write(key)
        return key


@dataclass
class SessionPolicy:
    secure: bool = True          # False only for plain-HTTP loopback (the demo); tests run TLS
    idle_seconds: float = 15 * 60
    max_seconds: float = 12 * 3600


@dataclass
class ConsoleSession:
    account_id: int | None = None
    method: str = "password"
    started: float = 0.0
    seen: float = 0.0
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    flash: list = field(default_factory=list)  # [(kind, text)], shown once on the next page
    changed: bool = False

    @property
    def signed_in(self) -> bool:
        return self.account_id is not None

    def say(self, kind: str, text: str) -> None:
        self.flash.append((kind, text))
        self.changed = True

    def take_flash(self) -> list:
        out, self.flash = self.flash, []
        if out:
            self.changed = True
        return out

    def csrf_ok(self, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(token, self.csrf)


class SessionCodec:
    def __init__(self, key: bytes, policy: SessionPolicy):
        self.policy = policy
        self.serializer = URLSafeSerializer(key, salt="provisioner-console-session")
        # a pending single sign-on is sealed (encrypted, authenticated) with a key of its own,
        # derived from the console's: it carries the PKCE verifier, which the browser must not read
        self._pending = Fernet(base64.urlsafe_b64encode(
            HKDF(hashes.SHA256(), 32, salt=None, info=b"provisioner-console-oidc-pending").derive(key)))
        self.cookie = "__Host-console" if policy.secure else "console"

    def load(self, raw: str | None, now: float | None = None) -> tuple[ConsoleSession, str | None]:
        """The session in the cookie, or a fresh one; the second value says why an old one ended."""
        now = now or time.time()
        if not raw:
            return ConsoleSession(changed=True), None
        try:
            d = self.serializer.loads(raw)
        except BadSignature:
            return ConsoleSession(changed=True), None
        s = ConsoleSession(d.get("a"), d.get("m", "password"), d.get("t0", 0.0), d.get("ts", 0.0),
                           d.get("c") or secrets.token_urlsafe(32), [tuple(x) for x in d.get("f", [])])
        if s.signed_in and now - s.seen > self.policy.idle_seconds:
            return ConsoleSession(changed=True), f"signed out after {self.policy.idle_seconds / 60:.0f} minutes without activity"
        if s.signed_in and now - s.started > self.policy.max_seconds:
            return ConsoleSession(changed=True), f"signed out: sessions last at most {self.policy.max_seconds / 3600:.0f} hours"
        return s, None

    def dump(self, s: ConsoleSession) -> str:
        return self.serializer.dumps({"a": s.account_id, "m": s.method, "t0": s.started, "ts": s.seen,
                                      "c": s.csrf, "f": s.flash})

    def set_cookie(self, response, s: ConsoleSession) -> None:
        response.set_cookie(self.cookie, self.dump(s), httponly=True, secure=self.policy.secure,
                            samesite="Strict", path="/")

    def seal_pending(self, values: dict) -> str:
        return self._pending.encrypt(json.dumps(values).encode()).decode()

    def open_pending(self, sealed: str, max_age: int) -> dict | None:
        """A pending sign-on this console sealed less than `max_age` seconds ago, or None."""
        try:
            values = json.loads(self._pending.decrypt(sealed.encode(), ttl=max_age))
        except (InvalidToken, ValueError):
            return None
        return values if isinstance(values, dict) and {"state", "nonce", "verifier", "next"} <= values.keys() else None

    def begin(self, account_id: int, method: str) -> ConsoleSession:
        """A new session for a sign-in: new CSRF token too (no fixation of a pre-login one)."""
        t = time.time()
        return ConsoleSession(account_id, method, t, t, changed=True)


def security_headers(response) -> None:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["X-Frame-Options"] = "DENY"
    if response.mimetype == "text/html":
        response.headers["Cache-Control"] = "no-store"
