"""`provisioner node list|show|maintenance|clear`: one node's lifecycle, seen and changed by an operator."""

from __future__ import annotations

import click

from provisioner.cli import cli
from provisioner.cli.output import console, json_option, table
from provisioner.cli.remote import quote, remote_for
from provisioner.context import Context
from provisioner.operations import node_lifecycle


@cli.group()
def node():
    """One node's lifecycle: list, show, maintenance on|off, clear."""


@node.command("list")
@click.option("--environment", "-e", default=None, help="Only this environment's nodes.")
@json_option
@click.pass_obj
def list_cmd(ctx: Context, environment: str | None):
    """Every node with its state and why. Example: provisioner node list -e staging"""
    remote = remote_for(ctx.settings)
    if remote:
        data = [{"node": r["node"], "environment": r["environment"], "rack": r["rack"], "model": r["model"],
                 "state": r["state"], "why": r["state_reason"], "release": r["release"]}
                for r in remote.call("GET", "/api/v1/nodes", query={"environment": environment})]
    else:
        ctx.store.sync_nodes(ctx.spec)
        data = [{"node": r.name, "environment": r.environment, "rack": r.rack, "model": r.model, "state": r.state,
                 "why": r.state_reason, "release": r.release_id} for r in ctx.store.nodes(environment)]

    def render(d):
        table("nodes", ["node", "env", "rack", "model", "state", "why"],
              [[n["node"], n["environment"], n["rack"], n["model"], n["state"], n["why"][:70]] for n in d])

    return data, render


@node.command()
@click.argument("name")
@json_option
@click.pass_obj
def show(ctx: Context, name: str):
    """State and why, firmware observed vs pinned, last events, last rollout steps. Example: provisioner node show s1n01"""

    def render(d):
        console.print(f"{d['node']} ({d['model']}, rack {d['rack']}, {d['environment']}): [bold]{d['state']}[/bold]"
                      f" — {d['why']}")
        table("firmware", ["component", "observed", "pinned", ""],
              [[c, v["observed"], v["pinned"], "" if v["observed"] == v["pinned"] else "≠"]
               for c, v in d["firmware"].items()])
        table("last events", ["at", "source", "event", "details"],
              [[e["at"][11:19], e["source"], e["event"], ", ".join(f"{k}={str(v)[:30]}" for k, v in e["details"].items())]
               for e in d["events"]])
        if d["last_rollout"]:
            lr = d["last_rollout"]
            table(f"rollout {lr['id']} ({lr['kind']}, {lr['status']}): {lr['action']} → {lr['node_status']}",
                  ["at", "step", "phase", "error"],
                  [[s["at"][11:19], s["step"], s["phase"], s["error"] or ""] for s in lr["steps"]])

    remote = remote_for(ctx.settings)
    return (remote.call("GET", f"/api/v1/nodes/{quote(name)}") if remote else node_lifecycle.detail(ctx, name)), render


@node.command()
@click.argument("switch", type=click.Choice(["on", "off"]))
@click.argument("name")
@click.option("--reason", required=True, help="Why (audited).")
@json_option
@click.pass_obj
def maintenance(ctx: Context, switch: str, name: str, reason: str):
    """Take a node out of rollouts (on) or give it back (off, to ready). Audited.

    \b
    A node in maintenance is planned `hold` and left alone by every rollout.
    Example:
      provisioner node maintenance on r1n03 --reason "DIMM swap, ticket 1234"
    """
    remote = remote_for(ctx.settings)
    data = (remote.call("POST", f"/api/v1/nodes/{quote(name)}/maintenance", {"on": switch == "on", "reason": reason})
            if remote else node_lifecycle.maintenance(ctx, name, switch == "on", reason))
    return data, lambda d: console.print(f"{name}: {d['from']} → {d['state']}")


@node.command()
@click.argument("name")
@click.option("--reason", required=True, help="What was done about the failure (audited).")
@json_option
@click.pass_obj
def clear(ctx: Context, name: str, reason: str):
    """A failed, needs-hands or held node back to ready, after a fresh BMC read. Audited.

    \b
    The BMC is read now (holding the node's and the BMC's leases, so no rollout acts on it
    meanwhile); an unreadable BMC refuses the clear (exit 7). `plan` then plans it as any node.
    Example:
      provisioner node clear s1n01 --reason "BIOS recovered by hand, INC-4411"
    """
    remote = remote_for(ctx.settings)
    data = (remote.call("POST", f"/api/v1/nodes/{quote(name)}/clear", {"reason": reason}) if remote
            else node_lifecycle.clear(ctx, name, reason))

    def render(d):
        console.print(f"{name}: {d['from']} → {d['state']} (BMC read now: "
                      + " ".join(f"{c}={v['observed']}" for c, v in d["firmware"].items()) + ")")
        if not d["at_pins"]:
            console.print(f"  not at its pins: `provisioner plan {d['environment']}` shows what re-provisioning does")

    return data, render
