"""Authenticating a person: a password or an API token in, an `Actor` bound to an account out.

The operator API will call these for every request; the CLI calls them for what needs an
account locally (approvals). Every failure is NotAuthenticated with one line saying why, and
never says whether the username exists.
"""

from __future__ import annotations

from provisioner.auth.credentials import password_matches
from provisioner.auth.identity import Actor, Method, normalise_username
from provisioner.errors import InputError, NotAuthenticated
from provisioner.store.accounts import Accounts


def with_password(accounts: Accounts, username: str, password: str, client: str | None = None) -> Actor:
    try:
        name = normalise_username(username)
    except InputError as e:  # a malformed name is a failed sign-in like any other
        raise NotAuthenticated(str(e)) from None
    found = accounts.password_hash(name)
    if found is None or not password_matches(found[1], password):
        raise NotAuthenticated(f"wrong username or password for {name!r}")
    account = found[0]
    if account.disabled:
        raise NotAuthenticated(f"account {name!r} is disabled")
    return Actor.of_account(account, Method.PASSWORD, client)


def with_token(accounts: Accounts, token: str, client: str | None = None) -> Actor:
    if not token or not token.strip():
        raise NotAuthenticated("empty API token")
    return Actor.of_account(accounts.account_for_token(token.strip()), Method.TOKEN, client)
