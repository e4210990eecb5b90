"""`provisioner user add|list|disable` and `provisioner token create|list|revoke`: accounts.

On the server host they work on the store directly: the installation's root's bootstrap tools
(recorded as `root@HOST (local store)`); acting with PROVISIONER_TOKEN, they need the admin role.
Through the operator API (`provisioner login`) they are an admin's calls, authorised by the matrix.
"""

from __future__ import annotations

import click

from provisioner.auth.credentials import MIN_PASSWORD
from provisioner.auth.identity import Role
from provisioner.cli import cli
from provisioner.cli.auth_input import read_secret
from provisioner.cli.output import console, json_option, table
from provisioner.cli.remote import quote, remote_for
from provisioner.context import Context
from provisioner.errors import PolicyViolation
from provisioner.operations.common import authorise
from provisioner.policy.authz import Action

ROLES = click.Choice([str(r) for r in Role])


def _admin(ctx: Context, subject: str) -> None:
    authorise(ctx, ctx.actor, Action.MANAGE_USERS, subject)


@cli.group()
def user():
    """Accounts: who may act, with which role (viewer, operator, approver, admin)."""


@user.command("add")
@click.argument("name")
@click.option("--role", type=ROLES, required=True, help="viewer · operator · approver · admin (see the README's matrix).")
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin instead of a prompt.")
@click.option("--no-password", is_flag=True, help="No password: the account signs in with tokens or SSO only.")
@json_option
@click.pass_obj
def user_add(ctx: Context, name: str, role: str, password_stdin: bool, no_password: bool):
    """Create an account NAME (normalised: NFKC, casefolded; no whitespace).

    \b
    Examples:
      provisioner user add bob --role approver            # asks for the password twice
      echo "$PW" | provisioner user add ci --role operator --password-stdin
    """
    remote = remote_for(ctx.settings)
    if not remote:
        _admin(ctx, name)
    password = None
    if not no_password:
        password = read_secret(f"password for {name}", password_stdin, confirm=True)
        if len(password) < MIN_PASSWORD:
            raise PolicyViolation(f"a password needs at least {MIN_PASSWORD} characters")
    if remote:
        data = remote.call("POST", "/api/v1/accounts", {"username": name, "role": role, "password": password})
    else:
        data = ctx.store.accounts.add(name, role, ctx.actor, password=password).as_dict()
    return data, lambda d: console.print(f"account {d['username']} ({d['role']}) created")


@user.command("list")
@json_option
@click.pass_obj
def user_list(ctx: Context):
    """Every account, with its role and whether it is disabled."""
    remote = remote_for(ctx.settings)
    rows = remote.call("GET", "/api/v1/accounts") if remote else ctx.store.accounts.list()

    def render(d):
        table("accounts", ["id", "username", "role", "password", "sso", "disabled", "created by"],
              [[a["id"], a["username"], a["role"], "yes" if a["password"] else "-", "yes" if a["oidc"] else "-",
                "DISABLED" if a["disabled"] else "", a["created_by"]] for a in d])

    return rows, render


@user.command("disable")
@click.argument("name")
@click.option("--reason", default="", help="Why (left, compromised, ...).")
@json_option
@click.pass_obj
def user_disable(ctx: Context, name: str, reason: str):
    """Disable an account: it can no longer sign in, its tokens are revoked, its approvals stop counting."""
    remote = remote_for(ctx.settings)
    if remote:
        changed = remote.call("POST", f"/api/v1/accounts/{quote(name)}/disable", {"reason": reason})["disabled"]
    else:
        _admin(ctx, name)
        changed = ctx.store.accounts.disable(name, ctx.actor, reason)
    return {"username": name, "disabled": changed}, \
        lambda d: console.print(f"account {name} disabled" if changed else f"account {name} was already disabled")


@cli.group()
def token():
    """Personal API tokens: random, shown once, stored as a hash, named, expiring, revocable."""


@token.command("create")
@click.option("--user", "username", required=True, help="The account the token acts as.")
@click.option("--name", required=True, help="What the token is for, e.g. ci, laptop.")
@click.option("--days", default=90.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Lifetime in days.")
@json_option
@click.pass_obj
def token_create(ctx: Context, username: str, name: str, days: float):
    """Issue a token for an account; it is printed once and never again.

    \b
    Example:
      provisioner token create --user bob --name laptop --days 30
    """
    remote = remote_for(ctx.settings)
    if remote:
        data = remote.call("POST", f"/api/v1/accounts/{quote(username)}/tokens", {"name": name, "days": days})
    else:
        _admin(ctx, username)
        secret, rec = ctx.store.accounts.create_token(username, name, ctx.actor, days)
        data = {**rec, "token": secret}

    def render(d):
        console.print(f"token {d['id']} ({d['name']}) for {d['account']}, expires {d['expires_at'][:19]}:\n"
                      f"  {d['token']}\nIt is shown only now; keep it like a password.")

    return data, render


@token.command("list")
@click.option("--user", "username", default=None, help="Only this account's tokens.")
@json_option
@click.pass_obj
def token_list(ctx: Context, username: str | None):
    """Tokens (never their secret): owner, name, expiry, revocation, last use."""
    remote = remote_for(ctx.settings)
    rows = remote.call("GET", "/api/v1/tokens", query={"user": username}) if remote \
        else ctx.store.accounts.tokens(username)

    def render(d):
        table("API tokens", ["id", "account", "name", "expires", "revoked", "last used"],
              [[t["id"], t["account"], t["name"], t["expires_at"][:19], (t["revoked_at"] or "")[:19],
                (t["last_used_at"] or "-")[:19]] for t in d])

    return rows, render


@token.command("revoke")
@click.argument("token_id", type=int)
@json_option
@click.pass_obj
def token_revoke(ctx: Context, token_id: int):
    """Revoke token TOKEN_ID (from `token list`) at once."""
    remote = remote_for(ctx.settings)
    if remote:
        changed = remote.call("DELETE", f"/api/v1/tokens/{token_id}")["revoked"]
    else:
        _admin(ctx, str(token_id))
        changed = ctx.store.accounts.revoke_token(token_id, ctx.actor)
    return {"id": token_id, "revoked": changed}, \
        lambda d: console.print(f"token {token_id} revoked" if changed else f"token {token_id} was already revoked")
