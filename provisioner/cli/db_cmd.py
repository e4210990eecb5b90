"""`provisioner db status|upgrade|copy`: the store's schema, its migrations, and moving it elsewhere."""

from __future__ import annotations

import click

from provisioner.cli import cli
from provisioner.cli.output import console, json_option, table
from provisioner.cli.remote import on_this_host
from provisioner.context import Context
from provisioner.store.copy import copy_store
from provisioner.store.db import Database, schema_state
from provisioner.store.errors import mask_url


@on_this_host("the store of --data/--db here")
@cli.group()
def db():
    """The store: its schema revision, migrations, and copying it to PostgreSQL.

    \b
    SQLite (the default, in the data directory) is migrated on first use; any other store only
    by `provisioner db upgrade`, run once per new version before the services start.
    """


@db.command("status")
@json_option
@click.pass_obj
def db_status(ctx: Context):
    """Which store this is and its schema revision (exit 5 if it cannot be opened).

    \b
    Example:
      provisioner --db postgresql://prov@db1/provisioner db status
    """
    url = ctx.settings.url
    revision, head = schema_state(url)
    data = {"url": mask_url(url), "revision": revision, "head": head, "up_to_date": revision == head}

    def render(d):
        state = "up to date" if d["up_to_date"] else "behind: run `provisioner db upgrade`"
        table(None, ["store", "schema revision", "newest known", "state"],
              [[d["url"], d["revision"] or "(none)", d["head"], state]])

    return data, render


@db.command("upgrade")
@json_option
@click.pass_obj
def db_upgrade(ctx: Context):
    """Migrate the store's schema to the newest revision (idempotent).

    \b
    Example:
      provisioner --db postgresql://prov@db1/provisioner db upgrade
    """
    url = ctx.settings.url
    before, head = schema_state(url)
    Database(url, upgrade=True).close()
    data = {"store": mask_url(url), "before": before, "revision": head}

    def render(d):
        if d["before"] == d["revision"]:
            console.print(f"{d['store']}: schema already at {d['revision']}")
        else:
            console.print(f"{d['store']}: schema {d['before'] or '(none)'} -> {d['revision']}")

    return data, render


@db.command("copy")
@click.option("--to", "to_url", required=True, metavar="URL", help="The empty database to copy into.")
@json_option
@click.pass_obj
def db_copy(ctx: Context, to_url: str):
    """Copy the whole store (releases, environments, nodes, audit chain, rollouts) into an empty
    database, migrating it first, and verify the audit chain there before committing.

    \b
    Example (move the embedded SQLite store to PostgreSQL):
      provisioner db copy --to postgresql://prov@db1/provisioner
      export PROVISIONER_DB=postgresql://prov@db1/provisioner
    Artifacts stay in the data directory: every host that serves them needs that directory.
    """
    source = Database(ctx.settings.url)
    target = Database(to_url, upgrade=True)
    try:
        counts = copy_store(source, target)
    finally:
        source.close()
        target.close()
    data = {"to": mask_url(to_url), "rows": counts, "chain_verified": True}
    return data, lambda d: console.print(
        f"copied {sum(d['rows'].values())} rows to {d['to']}: {d['rows'].get('releases', 0)} releases, "
        f"{d['rows'].get('audit_log', 0)} audit entries (chain verified), {d['rows'].get('nodes', 0)} nodes; "
        "use it with --db or PROVISIONER_DB")
