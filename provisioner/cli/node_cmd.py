"""`provisioner node list|show|maintenance|clear`: one node's lifecycle, seen and changed by an operator."""

from __future__ import annotations

import click
from sqlalchemy import select

from provisioner.cli import cli
from provisioner.cli.output import console, json_option, table
from provisioner.cli.remote import on_this_host, remote_for
from provisioner.context import Context
from provisioner.drivers import open_driver
from provisioner.errors import DriverError, PolicyViolation, ReleaseError
from provisioner.operations import common
from provisioner.releases.view import ReleaseView
from provisioner.rollout.lease import Leases, bmc_key, node_key
from provisioner.states import IllegalTransition
from provisioner.store.models import RolloutNodeRow, RolloutRow
from provisioner.store.repo import aware, now


def _row(ctx: Context, name: str):
    ctx.store.sync_nodes(ctx.spec)
    row = ctx.store.node(name)
    if row is None:
        known = ", ".join(r.name for r in ctx.store.nodes()[:8])
        raise ReleaseError(f"no node {name!r} in the inventory (known: {known}, ...)")
    return row


def _pins(ctx: Context, row) -> dict[str, str]:
    rid = ctx.store.current_release_id(row.environment)
    if rid is None:
        return {}
    return {c.name: c.version for c in ReleaseView.of(ctx.store.get_release(rid)).pins(row.model) or ()}


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


def node_detail(ctx: Context, name: str) -> dict:
    row = _row(ctx, name)
    pins = _pins(ctx, row)
    fw = row.observed or {}
    with ctx.store.db.session() as s:
        last = s.execute(select(RolloutNodeRow, RolloutRow).join(RolloutRow, RolloutRow.id == RolloutNodeRow.rollout_id)
                         .where(RolloutNodeRow.node == name).order_by(RolloutRow.id.desc()).limit(1)).first()
    last_rollout = None
    if last is not None:
        rn, r = last
        from provisioner.rollout.record import RolloutRecord

        steps = [{"step": s["step"], "phase": s["phase"], "at": s["at"].isoformat()[:23],
                  "error": (s["details"] or {}).get("error")}
                 for s in RolloutRecord(ctx.store).steps(r.id) if s["node"] == name]
        last_rollout = {"id": r.id, "kind": r.kind, "status": r.status, "node_status": rn.status,
                        "action": rn.action, "error": rn.error, "steps": steps}
    return {"node": row.name, "environment": row.environment, "rack": row.rack, "model": row.model,
            "state": row.state, "why": row.state_reason, "release": row.release_id,
            "installed_release": row.installed_release,
            "observed_at": aware(row.observed_at).isoformat()[:19] if row.observed_at else None,
            "firmware": {c: {"observed": fw.get(c), "pinned": pins.get(c)} for c in sorted({*fw, *pins})},
            "events": ctx.store.node_events(name, limit=10), "last_rollout": last_rollout}


@on_this_host(refuse="works on the server host's store only (no API route yet): run it there, "
              "or `provisioner node list` and `status` from here")
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

    return node_detail(ctx, name), render


def _transition(ctx: Context, name: str, event: str, reason: str, **fields) -> dict:
    row = _row(ctx, name)
    try:
        state = ctx.store.transition_node(name, event, reason, **fields)
    except IllegalTransition as e:
        raise PolicyViolation(str(e)) from None
    ctx.store.audit(ctx.settings.actor, f"node.{event}", name, {"from": row.state, "to": str(state), "reason": reason})
    return {"node": name, "from": row.state, "state": str(state), "reason": reason}


@on_this_host(refuse="works on the server host's store only (no API route yet): run it there, "
              "or `provisioner node list` and `status` from here")
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
    data = _transition(ctx, name, f"maintenance_{switch}", f"maintenance {switch}: {reason}")
    return data, lambda d: console.print(f"{name}: {d['from']} → {d['state']}")


@on_this_host(refuse="works on the server host's store only (no API route yet): run it there, "
              "or `provisioner node list` and `status` from here")
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
    row = _row(ctx, name)
    ep = common.endpoints(ctx)[name]
    leases = Leases(ctx.store)
    try:
        with ctx.store.db.write() as c:
            for key in (node_key(name), bmc_key(ep.address, ep.port)):
                leases.take(c, key, f"node clear {name}")
        try:
            with open_driver(ep) as d:
                fw = d.firmware_inventory()
        except DriverError as e:
            raise type(e)(f"{name}: BMC not read, node not cleared: {e}") from None
        ctx.store.update_node(name, observed=fw, observed_at=now())
        data = _transition(ctx, name, "clear", f"cleared: {reason}")
    finally:
        leases.release_all()
    pins = _pins(ctx, row)
    data["firmware"] = {c: {"observed": fw.get(c), "pinned": v} for c, v in pins.items()}
    data["at_pins"] = all(fw.get(c) == v for c, v in pins.items())

    def render(d):
        console.print(f"{name}: {d['from']} → {d['state']} (BMC read now: "
                      + " ".join(f"{c}={v['observed']}" for c, v in d["firmware"].items()) + ")")
        if not d["at_pins"]:
            console.print(f"  not at its pins: `provisioner plan {row.environment}` shows what re-provisioning does")

    return data, render
