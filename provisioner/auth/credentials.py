"""Secrets of accounts: argon2id password hashes and personal API tokens (random, stored as a hash).

Passwords are hashed with argon2id (RFC 9106) at argon2-cffi's defaults. An API token is 32
random bytes; only its sha256 is stored. A fast hash is enough for a token (unlike a password,
it has 256 bits of entropy, so the store's copy cannot be guessed back), and it lets a token be
looked up by its digest.
"""

from __future__ import annotations

import hashlib
import secrets

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError

TOKEN_PREFIX = "prv_"  # recognisable in logs and secret scanners
MIN_PASSWORD = 8

_hasher = PasswordHasher(type=Type.ID)


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def password_matches(stored_hash: str | None, password: str) -> bool:
    if not stored_hash:
        return False
    try:
        return _hasher.verify(stored_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def new_api_token() -> tuple[str, str]:
    """(the token, shown once; its sha256, the only thing stored)."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    return token, token_digest(token)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.strip().encode()).hexdigest()
