"""What is, read from every BMC now: plan, drift (report, or --fix), status.

Not green unless complete: a node whose BMC could not be read is listed with the error, in the
human output too, and the command exits 10 (incomplete) whatever else it found.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from provisioner.cli import cli
from provisioner.cli.output import console, json_option, table
from provisioner.cli.remote import quote, remote_for
from provisioner.cli.rollout_output import (
    ENV,
    YES,
    RolloutProgress,
    ask_if_protected,
    confirm_protected,
    environment_on,
    follow,
    say_unread,
)
from provisioner.context import Context
from provisioner.errors import IncompleteRead, ProvisionerError, RolloutHalted, SpecError
from provisioner.operations import nodes as node_ops
from provisioner.operations import rollouts
from provisioner.plan import saved_plan


def _render_plan(d):
    console.print(f"plan for {d['environment']} at release {d['release'][:12]}: "
                  + ", ".join(f"{v} {k}" for k, v in sorted(d["counts"].items())))
    rows = [[n["node"], n["rack"], n["model"], n["action"], n["reason"]] for n in d["nodes"]
            if n["action"] not in ("nothing", "unknown")]
    if rows:
        table(None, ["node", "rack", "model", "action", "why"], rows)
    say_unread(d["unreachable"], "their firmware is unknown, so nothing is planned for them and "
                "`apply` leaves them alone")
    if d.get("saved_to"):
        console.print(f"plan saved to {d['saved_to']}: `provisioner apply {d['saved_to']}` applies exactly it")


@cli.command()
@ENV
@click.option("--no-refresh", is_flag=True, help="Plan from the last stored BMC reads instead of reading every BMC now.")
@click.option("-o", "--out", "out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Save the plan (release, the firmware read from every node, the actions) for `apply FILE`.")
@json_option
@click.pass_obj
def plan(ctx: Context, environment: str, no_refresh: bool, out: Path | None):
    """What would change in ENVIRONMENT, node by node, and why.

    \b
    Exit codes like `terraform plan -detailed-exitcode`: 0 nothing to do, 2 changes, 1 error;
    10 incomplete: some BMC could not be read (listed, with the error), whatever else was found.
    Never plans a flash to a blocked or unapproved version, nor of a component at its pin.

    \b
    Examples:
      provisioner plan production
      provisioner plan production -o prod.plan    # then: provisioner apply prod.plan
      provisioner plan staging --json | jq '.nodes[] | select(.action != "nothing")'
    """
    remote = remote_for(ctx.settings)
    try:
        if remote:  # the server reads its BMCs; `-o` keeps the plan it made
            data = remote.call("GET", f"/api/v1/environments/{quote(environment)}/plan",
                               query={"refresh": "false" if no_refresh else "true", "saved": "true" if out else None})
            kept, errors, changes = data.pop("saved_plan", None), data["unreachable"], \
                any(n["action"] not in ("nothing", "unknown") for n in data["nodes"])  # Plan.changes
        else:
            p, errors, observed = node_ops.plan_observed(ctx, environment, refresh=not no_refresh)
            data, kept, changes = {**p.as_dict(), "unreachable": errors}, None, bool(p.changes)
    except ProvisionerError as e:
        # 2 means "changes" here: every error, a spec error (normally 2) included, must be 1
        for line in e.problems if isinstance(e, SpecError) else [e]:
            click.echo(f"error: {line}", err=True)
        raise click.exceptions.Exit(1) from None
    if out is not None:
        try:
            out.write_text(json.dumps(kept or saved_plan(p, errors, observed), indent=2) + "\n")
        except OSError as e:
            click.echo(f"error: cannot save the plan to {out}: {e.strerror}", err=True)
            raise click.exceptions.Exit(1) from None
        data["saved_to"] = str(out)
    return data, _render_plan, IncompleteRead.exit_code if errors else (2 if changes else 0)


@cli.command()
@click.argument("environment", required=False)
@click.option("--fix", is_flag=True, help="Re-provision the drifted nodes (a rollout per environment).")
@click.option("--no-fix", "no_fix", is_flag=True, hidden=True, help="Report only (the default; kept for scripts).")
@YES
@json_option
@click.pass_obj
def drift(ctx: Context, environment: str | None, fix: bool, no_fix: bool, yes: bool):
    """Nodes whose BMC reports firmware other than their release pins (read from every BMC now).

    \b
    Reports only; --fix re-provisions the drifted nodes (never a patch). Without ENVIRONMENT,
    every environment. A protected environment asks before --fix on a terminal; elsewhere it
    needs --yes. Exit codes: 0 no drift (or all fixed), 2 drift left in place, 8 a fix halted,
    10 incomplete: some BMC could not be read (listed, with the error).
    Examples:
      provisioner drift                    # every environment, report only
      provisioner drift production --fix --yes
    Through the operator API the server reads its BMCs and runs the fix; this command follows it.
    """
    remote = remote_for(ctx.settings)
    if remote:
        answer = remote.call("GET", "/api/v1/drift", query={"environment": environment})
        items, errors = answer["drift"], answer["unreachable"]
    else:
        found, errors = node_ops.drift(ctx, environment)
        items = [i.as_dict() for i in found]
    data = {"drift": items, "unreachable": errors, "fixed": None}
    halted = False
    if fix and not no_fix and items:
        by_env: dict[str, set] = {}
        for i in items:
            by_env.setdefault(i["environment"], set()).add(i["node"])
        for env, nodes in sorted(by_env.items()):
            doing = f"re-provision {len(nodes)} drifted node(s) of {env} ({', '.join(sorted(nodes))})"
            if remote:
                ask_if_protected(environment_on(remote, env)["protected"], env, doing, yes)
            else:
                confirm_protected(ctx, env, doing, yes)
        data["fixed"] = {}
        for env, nodes in sorted(by_env.items()):
            if remote:
                r = follow(remote, remote.call("POST", f"/api/v1/environments/{quote(env)}/drift-fix",
                                               {"nodes": sorted(nodes)}), RolloutProgress(True))
            else:
                r = rollouts.apply(ctx, env, kind="drift", reason="drift correction", only=nodes,
                                   progress=RolloutProgress(True))
            data["fixed"][env] = r.as_dict()
            halted = halted or r.status == "halted"

    def render(d):
        if not d["drift"]:
            console.print("no drift: every provisioned node read reports its release's pins")
        else:
            table("drift", ["node", "env", "component", "observed", "pinned"],
                  [[i["node"], i["environment"], i["component"], i["observed"], i["pinned"]] for i in d["drift"]])
            if d["fixed"] is None:
                console.print("left in place; `provisioner drift --fix` re-provisions these nodes")
        for env, r in (d["fixed"] or {}).items():
            console.print(f"{env}: re-provisioned {len(r['done'])}, failed {len(r['failed'])} ({r['status']})")
            if r["status"] == "halted":
                console.print(f"[red bold]HALTED[/red bold]: {r['reason']}")
        say_unread(d["unreachable"], "whether they drifted is unknown")

    if halted:
        code = RolloutHalted.exit_code
    elif errors:
        code = IncompleteRead.exit_code
    else:
        code = 2 if items and data["fixed"] is None else 0
    return data, render, code


@cli.command()
@click.argument("environment", required=False)
@click.option("--no-refresh", is_flag=True, help="From the last stored BMC reads instead of reading every BMC now.")
@json_option
@click.pass_obj
def status(ctx: Context, environment: str | None, no_refresh: bool):
    """Where each node stands: state, release, firmware (read from every BMC now) against the pins.

    \b
    Exit code 10 (incomplete) when some BMC could not be read: those nodes are listed with the
    error, and their compliance is unknown, not "yes".
    Examples:
      provisioner status production
      provisioner status --no-refresh --json
    """
    remote = remote_for(ctx.settings)
    if remote:
        answer = remote.call("GET", "/api/v1/status", query={"environment": environment,
                                                             "refresh": "false" if no_refresh else "true"})
        rows, unread = answer["nodes"], answer["unreachable"]
    else:
        rows, unread = node_ops.status(ctx, environment, refresh=not no_refresh)

    def render(d):
        table("nodes", ["node", "env", "state", "release", "compliant", "firmware (observed/pinned)"],
              [[r["node"], r["environment"], r["state"], (r["node_release"] or "-")[:12],
                {True: "yes", False: "NO", None: "unknown"}[r["compliant"]],
                " ".join(f"{k}={v['observed'] or '?'}" + ("" if v["observed"] == v["pinned"] else f"(≠{v['pinned'] or '-'})")
                         for k, v in r["components"].items())] for r in d])
        say_unread({r["node"]: r["bmc_error"] for r in d if r["bmc_error"]}, "firmware shown is the last stored read")

    return rows, render, IncompleteRead.exit_code if unread else 0
