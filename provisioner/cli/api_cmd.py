"""`provisioner api`: the operator API server (its own port; TLS with a certificate and key)."""

from __future__ import annotations

import gc
import logging
import signal
import threading
from pathlib import Path

import click

from provisioner.cli import cli
from provisioner.cli.remote import on_this_host
from provisioner.context import Context


@on_this_host("the operator API served from here")
@cli.command("api")
@click.option("--bind", "bind", default="127.0.0.1:8443", show_default=True, help="HOST:PORT to listen on.")
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="TLS certificate chain (PEM); with --tls-key the API speaks HTTPS only.")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="The certificate's private key (PEM).")
@click.option("--threads", default=32, show_default=True, type=click.IntRange(2),
              help="Request threads per process (a live event stream holds one while it is open).")
@click.option("--processes", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Processes answering on the one port (SO_REUSEPORT); each uses one core. Where many "
                   "clients poll, one per core.")
@click.option("--join", is_flag=True, hidden=True,
              help="Internal: one of --processes' copies; binds beside the first process.")
@click.option("--checkpoints/--no-checkpoints", default=True, show_default=True,
              help="Sign checkpoints of the audit chain's head (DATA/site.yaml: audit_checkpoints); "
                   "--no-checkpoints where another process on this host signs them.")
@click.option("--oidc-issuer", default=None, metavar="URL",
              help="Single sign-on for the web console: the OpenID Connect provider's issuer URL.")
@click.option("--oidc-client-id", default=None, metavar="ID", help="This server's client id at the provider.")
@click.option("--oidc-redirect", default=None, metavar="URL",
              help="The console's callback as registered at the provider: https://HOST:PORT/console/oidc/callback")
@click.option("-v", "--verbose", is_flag=True, help="Log every refusal and error (INFO) to stderr.")
@click.pass_obj
def api(ctx: Context, bind: str, tls_cert: Path | None, tls_key: Path | None, threads: int, processes: int,
        join: bool, checkpoints: bool, oidc_issuer: str | None, oidc_client_id: str | None, oidc_redirect: str | None, verbose: bool):
    """Run the operator API (JSON under /api/v1) until interrupted.

    \b
    Every call is authenticated (an API token: `Authorization: Bearer prv_...`, or a session from
    POST /api/v1/session) and authorised by the roles matrix. Without --tls-cert/--tls-key it
    speaks plain HTTP and its session cookie is not marked Secure: keep it on loopback then.
    While it runs it signs checkpoints of the audit chain's head (every N entries and M minutes,
    DATA/site.yaml) into the checkpoint file and the log: `audit verify` holds the chain to them.
    The OpenAPI document is at /api/v1/openapi.json; the web console for approvers and on-call is
    at /console/ (its session cookie is Secure: serve it with TLS, or on loopback only).

    \b
    Examples:
      provisioner api                                         # http://127.0.0.1:8443, loopback only
      provisioner api --bind 0.0.0.0:8443 --tls-cert api.pem --tls-key api.key --processes 2
    """
    from provisioner.api.operator import OperatorDeps, create_operator_app
    from provisioner.api.operator.server import OperatorServer
    from provisioner.cli import logging_asked
    from provisioner.console import console_blueprint
    from provisioner.console.session import SessionPolicy
    from provisioner.observability import logs
    from provisioner.serve.binds import parse_bind

    if (tls_cert is None) != (tls_key is None):
        raise click.UsageError("--tls-cert and --tls-key go together")
    oidc = _oidc_client(oidc_issuer, oidc_client_id, oidc_redirect)
    if verbose or not logging_asked():
        logs.configure(None, logging.INFO if verbose else logging.WARNING)
    try:
        host, port = parse_bind(bind, 8443)
    except ValueError:
        raise click.BadParameter(f"{bind!r} is not HOST:PORT", param_hint="--bind") from None
    ctx.spec  # noqa: B018 - load (and check) the spec once, before the first request
    deps = OperatorDeps(ctx, secure_cookie=tls_cert is not None)
    try:
        console = console_blueprint(ctx, policy=SessionPolicy(secure=tls_cert is not None), oidc=oidc)
        app = create_operator_app(deps, blueprints=[console])
        server = OperatorServer(app, host, port, tls_cert=str(tls_cert) if tls_cert else None,
                                tls_key=str(tls_key) if tls_key else None, threads=threads,
                                reuse_port=processes > 1 or join).start()
    except OSError as e:
        raise click.ClickException(f"cannot serve the operator API on {bind}: {e.strerror or e}") from None
    # What start-up made (modules, the spec, the app) lives as long as the server: out of the
    # collector's sight, so a full collection no longer walks it and pauses every request.
    gc.collect()
    gc.freeze()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    signing = _start_signer(ctx, stop) if checkpoints and not join else None
    copies = _start_copies(ctx, processes - 1, host, server.port, threads, tls_cert, tls_key,
                           (oidc_issuer, oidc_client_id, oidc_redirect), verbose) if processes > 1 else None
    if not join:
        many = f", {processes} processes" if processes > 1 else ""
        click.echo(f"operator API on {server.scheme}://{server.host}:{server.port}/api/v1 "
                   f"(OpenAPI: /api/v1/openapi.json{many}); Ctrl-C stops it", err=True)
    while not stop.wait(1.0):
        if copies is not None:
            copies.watch()
    if copies is not None:
        copies.stop()
    console.console.closing.set()  # open console event streams end at their next look
    server.stop()
    deps.workers.shutdown(wait=True)  # running rollouts drain, recorded interrupted (resumable)
    if signing is not None:
        signing.join(30)  # its last checkpoint covers what the drained rollouts wrote
    return 0


def _oidc_client(issuer: str | None, client_id: str | None, redirect: str | None):
    """The console's OpenID Connect registration, or None; the client secret comes from the
    environment (PROVISIONER_OIDC_CLIENT_SECRET), never from a command line others can read."""
    import os

    from provisioner.auth.oidc import OidcClient

    given = [v is not None for v in (issuer, client_id, redirect)]
    if not any(given):
        return None
    if not all(given):
        raise click.UsageError("--oidc-issuer, --oidc-client-id and --oidc-redirect go together")
    secret = os.environ.get("PROVISIONER_OIDC_CLIENT_SECRET")
    if not secret:
        raise click.UsageError("single sign-on needs the client secret in PROVISIONER_OIDC_CLIENT_SECRET")
    return OidcClient(issuer.rstrip("/"), client_id, secret, redirect)


def _start_copies(ctx: Context, count: int, host: str, port: int, threads: int, tls_cert, tls_key, oidc, verbose):
    from provisioner.api.operator.copies import Copies, copy_argv, copy_env
    from provisioner.spec.files import MAX_FILE_BYTES_ENV

    env = copy_env(ctx.settings.db_url)
    env[MAX_FILE_BYTES_ENV] = str(ctx.settings.spec_limits.max_file_bytes)
    return Copies(count, copy_argv(spec_dir=ctx.settings.spec_dir, data_dir=ctx.settings.data_dir, host=host,
                                   port=port, threads=threads, tls_cert=tls_cert, tls_key=tls_key, oidc=oidc,
                                   verbose=verbose), env).start()


def _start_signer(ctx: Context, stop: threading.Event) -> threading.Thread:
    """The audit chain's anchor (issue: an emptied or rewritten store must not verify): the head is
    signed once now, then every N entries and M minutes, and once more when the server stops."""
    from provisioner.operations.audit import checkpoint_paths
    from provisioner.store.checkpoints import Checkpointer

    key, file = checkpoint_paths(ctx)
    cfg = ctx.site.audit_checkpoints
    signer = Checkpointer(ctx.store, key, file, cfg.every_entries, cfg.every_minutes * 60)
    signer.tick()
    thread = threading.Thread(target=signer.run, args=(stop,), name="audit-checkpoints", daemon=True)
    thread.start()
    return thread


api.prints_no_data = True  # a server: it logs, it prints no data
