"""`provisioner login --server URL` and `provisioner logout`: the CLI as a client of the operator API."""

from __future__ import annotations

import getpass
import socket

import click

from provisioner.cli import cli
from provisioner.cli.auth_input import read_secret
from provisioner.cli.output import console, json_option
from provisioner.cli.remote import Remote, login_path, save_login
from provisioner.context import Context


@cli.command()
@click.option("--server", required=True, help="The operator API's URL, e.g. https://prov.example:8443.")
@click.option("--user", "username", default=None, help="Your account [default: your login name].")
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin instead of asking.")
@click.option("--token", default=None, help="Keep this personal API token instead of signing in with a password.")
@click.option("--ca", type=click.Path(exists=True, dir_okay=False), default=None,
              help="CA bundle (PEM) to trust for the server's certificate [default: the system's].")
@json_option
@click.pass_obj
def login(ctx: Context, server: str, username: str | None, password_stdin: bool, token: str | None, ca: str | None):
    """Sign in to an operator API; later commands go through it with the same output and exit codes.

    \b
    With a password, a personal API token named after this host is issued to your account and
    kept (0600) in $XDG_CONFIG_HOME/provisioner/login.json; `provisioner logout` forgets it.
    Every operator command then goes through the API: release, gate, approve, promote, plan,
    apply, rollback, rollout, drift, status, node, block, unblock (two people: request, then
    --confirm), history, audit log/verify, user, token. The server runs rollouts; apply,
    rollback, rollout resume and drift --fix follow them. Commands of the host they run on
    (lab, serve, dhcp, netboot, worker, db, api, validate) act here and say so on stderr;
    audit checkpoint refuses.
    Examples:
      provisioner login --server https://prov.example:8443 --user bob
      provisioner login --server http://127.0.0.1:8443 --token prv_...
    """
    remote = Remote(server.rstrip("/"), token, ca)
    if token is None:
        username = username or getpass.getuser()
        password = read_secret(f"password of {username}", password_stdin)
        remote.call("POST", "/api/v1/session", {"username": username, "password": password})
        remote.cookie = (remote.set_cookie or "").split(";")[0]
        issued = remote.call("POST", "/api/v1/tokens", {"name": f"cli@{socket.gethostname()}"[:64]})
        remote.token, remote.cookie = issued["token"], None
    me = remote.call("GET", "/api/v1/whoami")
    path = save_login(remote.server, remote.token, ca)
    data = {"server": remote.server, "account": me["username"], "role": me["role"], "saved_to": str(path)}
    return data, lambda d: console.print(f"signed in to {d['server']} as {d['account']} ({d['role']}); "
                                         f"token kept in {d['saved_to']}")


@cli.command()
@click.pass_obj
def logout(ctx: Context):
    """Forget the operator API's login: commands use the local store again."""
    path = login_path()
    if path.exists():
        path.unlink()
        click.echo(f"signed out: {path} removed")
    else:
        click.echo("not signed in")


logout.prints_no_data = True
