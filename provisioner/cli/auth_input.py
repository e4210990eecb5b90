"""Getting a secret from the person at the keyboard: a hidden prompt, or one line of stdin."""

from __future__ import annotations

import getpass
import sys

import click

from provisioner.auth.authenticate import with_password, with_token
from provisioner.auth.identity import Actor
from provisioner.context import Context
from provisioner.errors import NotAuthenticated


def read_secret(what: str, from_stdin: bool, confirm: bool = False) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if not sys.stdin.isatty():
        raise NotAuthenticated(f"no terminal to ask for the {what}: pass --password-stdin and pipe it in")
    return click.prompt(what.capitalize(), hide_input=True, confirmation_prompt=confirm)


def authenticated_actor(ctx: Context, token: str | None, account: str | None, password_stdin: bool) -> Actor:
    """The account behind this command: the token's, else `account` (default: the login name) after
    its password is checked. A typed name alone never identifies anyone."""
    if token:
        return with_token(ctx.store.accounts, token, client="local")
    username = account if account is not None else getpass.getuser()
    password = read_secret(f"password of {username}", password_stdin)
    return with_password(ctx.store.accounts, username, password, client="local")
