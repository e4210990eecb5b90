"""`provisioner audit verify|log`."""

from __future__ import annotations

import click

from provisioner.cli import cli
from provisioner.cli.output import console, json_option, table
from provisioner.context import Context
from provisioner.errors import AuditError


@cli.group()
def audit():
    """The append-only, hash-chained audit log of every change."""


@audit.command("verify")
@json_option
@click.pass_obj
def audit_verify(ctx: Context):
    """Prove no audit entry was edited or deleted (exit 6 if one was).

    \b
    Example:
      provisioner audit verify --json     # {"ok": true, "entries": 42, "problems": []}
    """
    n, problems = ctx.store.verify_audit()
    data = {"ok": not problems, "entries": n, "problems": [str(p) for p in problems]}

    def render(d):
        if d["ok"]:
            console.print(f"audit log intact: {d['entries']} entries, chain verified")
        for p in d["problems"]:
            click.echo(f"error: {p}", err=True)

    if problems:
        render(data)
        raise AuditError(f"audit log broken: {len(problems)} problem(s)")
    return data, render


@audit.command("log")
@click.option("--limit", default=50, show_default=True, help="Newest entries to show.")
@json_option
@click.pass_obj
def audit_log(ctx: Context, limit: int):
    """Show the newest audit entries: who did what, when."""
    rows = ctx.store.audit_entries(limit)

    def render(d):
        table("audit log", ["#", "at", "actor", "action", "subject"],
              [[r["seq"], r["at"][:19], r["actor"], r["action"], r["subject"][:40]] for r in d])

    return rows, render
