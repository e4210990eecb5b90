"""`provisioner audit verify|log|checkpoint`."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import click

from provisioner.cli import cli
from provisioner.cli.output import console, json_option, table
from provisioner.cli.remote import on_this_host, remote_for
from provisioner.context import Context
from provisioner.errors import AuditError, InputError
from provisioner.operations import audit as audit_ops

_paths = audit_ops.checkpoint_paths


@cli.group()
def audit():
    """The append-only, hash-chained audit log of every change, anchored by signed checkpoints."""


@audit.command("verify")
@click.option("--checkpoints", "checkpoint_file", type=click.Path(path_type=Path), default=None,
              help="Signed checkpoints to hold the chain against [default: the server's, when present].")
@click.option("--public-key", type=click.Path(path_type=Path), default=None,
              help="The checkpoint signer's public key (PEM) [default: the server's .pub, when present].")
@json_option
@click.pass_obj
def audit_verify(ctx: Context, checkpoint_file: Path | None, public_key: Path | None):
    """Prove no audit entry was edited or deleted, and with checkpoints, that the chain was not
    rewritten, truncated or emptied (exit 6 if it was).

    \b
    Keep a copy of the checkpoint file and the public key off the server: a verify against the
    copies catches what a writer with the database's keys could do.
    Examples:
      provisioner audit verify --json     # {"ok": true, "entries": 42, "problems": []}
      provisioner audit verify --checkpoints /backup/audit-checkpoints.jsonl --public-key /backup/audit.pub
    Through the operator API the server verifies its store against its own checkpoints.
    """
    remote = remote_for(ctx.settings)
    if remote and (checkpoint_file or public_key):
        raise click.UsageError("--checkpoints and --public-key are checked where the files are: through the operator "
                               "API the server verifies against its own; run it on a host with a copy of the store")
    try:
        data = remote.call("GET", "/api/v1/audit/verify") if remote else audit_ops.verify(ctx, checkpoint_file,
                                                                                           public_key)
    except InputError as e:
        raise click.UsageError(str(e)) from None
    problems = data["problems"]

    def render(d):
        if d["ok"]:
            anchored = f", anchored by {d['checkpoints']} signed checkpoint(s)" if "checkpoints" in d else ""
            console.print(f"audit log intact: {d['entries']} entries, chain verified{anchored}")
        for p in d["problems"]:
            click.echo(f"error: {p}", err=True)

    if problems:
        render(data)
        raise AuditError(f"audit log broken: {len(problems)} problem(s)")
    return data, render


@on_this_host(refuse="signs with the server host's key: run it there (PROVISIONER_SERVER=local)")
@audit.command("checkpoint")
@click.option("--watch", is_flag=True, help="Keep running: sign every N entries and M minutes (DATA/site.yaml).")
@json_option
@click.pass_obj
def audit_checkpoint(ctx: Context, watch: bool):
    """Sign the chain's head now (creating the signing key, 0600, on first use) and append the
    checkpoint to the checkpoint file and the log.

    \b
    Examples:
      provisioner audit checkpoint                # once (cron, or after a change)
      provisioner audit checkpoint --watch        # the signer, as a service on the server host
    """
    from provisioner.store import checkpoints

    key, file = _paths(ctx)
    cfg = ctx.site.audit_checkpoints
    signer = checkpoints.Checkpointer(ctx.store, key, file, cfg.every_entries, cfg.every_minutes * 60)
    if watch:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        stop = threading.Event()
        try:
            signer.run(stop)
        except KeyboardInterrupt:
            stop.set()
        return None
    cp = signer.tick(force=True)
    data = {**cp.__dict__, "file": str(file), "public_key": str(checkpoints.public_path(key))}
    return data, lambda d: console.print(f"checkpoint: entry {d['seq']} signed ({d['hash'][:16]}…) → {d['file']}; "
                                         f"public key {d['public_key']}")


@audit.command("log")
@click.option("--limit", default=50, show_default=True, help="Newest entries to show.")
@json_option
@click.pass_obj
def audit_log(ctx: Context, limit: int):
    """Show the newest audit entries: who did what, how they were identified, when."""
    remote = remote_for(ctx.settings)
    rows = remote.call("GET", "/api/v1/audit", query={"limit": limit}) if remote else ctx.store.audit_entries(limit)

    def render(d):
        table("audit log", ["#", "at", "actor", "how", "action", "subject"],
              [[r["seq"], r["at"][:19], r["actor"], r.get("auth_method") or "", r["action"], r["subject"][:40]]
               for r in d])

    return rows, render
