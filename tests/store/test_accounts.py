"""Accounts and personal API tokens in the store: names normalised once, argon2id passwords,
tokens shown once and kept only as a hash, expiring, revocable; authentication says why it fails."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta

import pytest

from provisioner.auth.authenticate import with_password, with_token
from provisioner.auth.identity import Actor, Method, Role, normalise_username
from provisioner.errors import InputError, NotAuthenticated, PolicyViolation
from provisioner.store.db import Database
from provisioner.store.repo import Store

PW = "correct horse battery"


@pytest.fixture
def store(tmp_path):
    return Store(Database(f"sqlite:///{tmp_path / 'provisioner.db'}"))


@pytest.mark.parametrize("raw", ["u1", "U1", "u1 ", " U1\t", "ｕ１", "Ｕ1"])
def test_every_spelling_of_a_name_normalises_to_one(raw):
    assert normalise_username(raw) == "u1"


@pytest.mark.parametrize("raw, says", [("", "cannot be empty"), ("   ", "cannot be empty"),
                                       ("u 1", "contains whitespace"), ("u\u00a01", "contains whitespace")])
def test_an_empty_or_spaced_name_is_refused(raw, says):
    with pytest.raises(InputError, match=says):
        normalise_username(raw)


def test_an_account_is_kept_under_its_normalised_name_once(store):
    bob = store.accounts.add("Bob", "approver", "root", password=PW)
    assert (bob.username, bob.role) == ("bob", Role.APPROVER)
    with pytest.raises(PolicyViolation, match="account 'bob' already exists"):
        store.accounts.add("BOB ", "viewer", "root", password=PW)
    assert [a["username"] for a in store.accounts.list()] == ["bob"]


def test_passwords_are_stored_as_argon2id_hashes_only(store, tmp_path):
    store.accounts.add("bob", "approver", "root", password=PW)
    (stored,) = sqlite3.connect(tmp_path / "provisioner.db").execute("SELECT password_hash FROM accounts").fetchone()
    assert stored.startswith("$argon2id$") and PW not in stored


def test_a_password_authenticates_its_account_and_nothing_else(store):
    store.accounts.add("bob", "approver", "root", password=PW)
    who = with_password(store.accounts, "BOB", PW, client="10.0.0.7")
    assert (who.name, who.method, who.authenticated, who.audit_fields()) == (
        "bob", Method.PASSWORD, True, {"account_id": 1, "auth_method": "password", "client": "10.0.0.7"})
    for name, pw in (("bob", "wrong password"), ("nobody", PW)):
        with pytest.raises(NotAuthenticated, match=f"wrong username or password for '{name}'"):
            with_password(store.accounts, name, pw)


def test_a_token_is_shown_once_and_only_its_hash_is_stored(store, tmp_path):
    store.accounts.add("bob", "operator", "root", password=PW)
    token, rec = store.accounts.create_token("bob", "laptop", "root", days=30)
    assert token.startswith("prv_") and len(token) > 40 and "token" not in rec
    rows = sqlite3.connect(tmp_path / "provisioner.db").execute("SELECT * FROM api_tokens").fetchall()
    assert token not in repr(rows)
    who = with_token(store.accounts, token)
    assert (who.name, who.method) == ("bob", Method.TOKEN)
    assert store.accounts.tokens("bob")[0]["last_used_at"] is not None


def test_a_revoked_an_expired_and_an_unknown_token_do_not_authenticate(store, tmp_path):
    store.accounts.add("bob", "operator", "root", password=PW)
    revoked, rec = store.accounts.create_token("bob", "old", "root")
    expired, rec2 = store.accounts.create_token("bob", "short", "root", days=1)
    assert store.accounts.revoke_token(rec["id"], "root") is True
    assert store.accounts.revoke_token(rec["id"], "root") is False
    con = sqlite3.connect(tmp_path / "provisioner.db")
    con.execute("UPDATE api_tokens SET expires_at = ? WHERE id = ?", (datetime.now(UTC) - timedelta(hours=1), rec2["id"]))
    con.commit()
    with pytest.raises(NotAuthenticated, match="API token 'old' was revoked"):
        with_token(store.accounts, revoked)
    with pytest.raises(NotAuthenticated, match="API token 'short' expired"):
        with_token(store.accounts, expired)
    with pytest.raises(NotAuthenticated, match="unknown API token"):
        with_token(store.accounts, "prv_" + "x" * 43)


def test_a_disabled_account_cannot_sign_in_and_its_tokens_are_revoked(store):
    store.accounts.add("bob", "approver", "root", password=PW)
    token, _ = store.accounts.create_token("bob", "ci", "root")
    assert store.accounts.disable("bob", "root", "left the team") is True
    with pytest.raises(NotAuthenticated, match="account 'bob' is disabled"):
        with_password(store.accounts, "bob", PW)
    with pytest.raises(NotAuthenticated, match="was revoked"):
        with_token(store.accounts, token)


def test_account_changes_are_audited_with_who_did_them(store):
    root = Actor.local_store(claimed="ops", host="srv1")
    store.accounts.add("bob", "approver", root, password=PW)
    store.accounts.create_token("bob", "ci", root)
    store.accounts.disable("bob", root)
    entries = store.audit_entries()
    assert [(e["action"], e["actor"], e["auth_method"], e["client"]) for e in entries] == [
        (a, "root@srv1 (local store)", "local-store", "local:srv1 as ops (unverified)")
        for a in ("account.add", "token.create", "account.disable")]
    assert store.verify_audit() == (3, [])
