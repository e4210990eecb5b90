"""`provisioner rollout list|show|watch|resume|abort`: seeing a rollout, and deciding about a halted one."""

from __future__ import annotations

import time

import click

from provisioner.cli import cli
from provisioner.cli.output import console, err_console, json_option, table
from provisioner.cli.remote import remote_for
from provisioner.cli.rollout_output import (
    RolloutProgress,
    follow,
    follow_remote,
    rollout_exit,
    run_interruptible,
)
from provisioner.context import Context
from provisioner.errors import ReleaseError
from provisioner.operations import rollouts
from provisioner.operations.rollouts import rollout_detail, rollout_dict
from provisioner.rollout.record import RolloutRecord


@cli.group()
def rollout():
    """See rollouts (list, show, watch) and decide about a halted one (resume, abort)."""


@rollout.command("list")
@click.option("--environment", "-e", default=None, help="Only this environment's rollouts.")
@click.option("--limit", default=20, show_default=True)
@json_option
@click.pass_obj
def list_cmd(ctx: Context, environment: str | None, limit: int):
    """Rollouts, newest last. Example: provisioner rollout list -e staging"""
    remote = remote_for(ctx.settings)
    data = (remote.call("GET", "/api/v1/rollouts", query={"environment": environment, "limit": limit}) if remote
            else rollouts.rollouts(ctx, environment, limit))

    def render(d):
        table("rollouts", ["id", "env", "kind", "release", "status", "by", "created", "reason"],
              [[r["id"], r["environment"], r["kind"], r["release"][:12], r["status"], r["by"],
                r["created_at"].replace("T", " "), r["reason"][:60]] for r in d])

    return data, render


def _render_detail(d: dict) -> None:
    console.print(f"rollout {d['id']} ({d['kind']}) of {d['release'][:12]} to {d['environment']}: {d['status']}"
                  + (f" — {d['reason']}" if d["reason"] else ""))
    if d["holder"]:
        console.print(f"  run by {d['holder']['holder']} since {d['holder']['since'][:19]}")
    rows = []
    for n in d["nodes"]:
        steps = " ".join(f"{s['step']}:{s['outcome']}" for s in n["steps"])
        rows.append([n["node"], "canary" if n["wave"] == 0 else n["wave"], n["action"], n["status"],
                     steps or "-", n["error"][:60]])
    table(None, ["node", "wave", "action", "status", "steps", "error"], rows)


@rollout.command("show")
@click.argument("rollout_id", type=int)
@json_option
@click.pass_obj
def show(ctx: Context, rollout_id: int):
    """Per node: wave, action, status, and each step with begin, end and outcome.

    \b
    Example:
      provisioner rollout show 12 --json | jq '.nodes[] | select(.status == "failed")'
    """
    remote = remote_for(ctx.settings)
    return (remote.call("GET", f"/api/v1/rollouts/{rollout_id}") if remote else rollout_detail(ctx, rollout_id),
            _render_detail)


@rollout.command()
@click.argument("rollout_id", type=int)
@click.option("--interval", default=1.0, show_default=True, help="Seconds between two looks at the record.")
@json_option
@click.pass_obj
def watch(ctx: Context, rollout_id: int, interval: float):
    """Follow a rollout live, read-only, until it is no longer running (exit as `apply` would).

    \b
    Prints one line per step that begins or ends; with --json, one JSON object per line.
    Example:
      provisioner rollout watch 12
    """
    import json

    as_json = click.get_current_context().params.get("as_json", False)
    remote = remote_for(ctx.settings)
    if remote:  # the steps from the rollout's event stream, the outcome from its record
        def say(s):
            if as_json:
                click.echo(json.dumps(s, default=str))
            else:
                console.print(f"{s['at'][11:19]} {s['node']} {s['step']} {s['phase']}"
                              + (f": {s['error']}" if s.get("error") else ""))

        try:
            follow(remote, {"rollout": rollout_id}, lambda e: None, on_step=say)
        except KeyboardInterrupt:
            raise click.exceptions.Exit(130) from None
        d = {k: v for k, v in remote.call("GET", f"/api/v1/rollouts/{rollout_id}").items()
             if k not in ("holder", "nodes")}
        return (d, lambda d: console.print(f"rollout {d['id']} {d['status']}: {d['reason']}"),
                rollout_exit(d["status"]))
    record = RolloutRecord(ctx.store)
    r = record.rollout(rollout_id)
    if r is None:
        raise ReleaseError(f"no rollout {rollout_id}; `provisioner rollout list` shows them")
    seen = 0
    while True:
        r = record.rollout(rollout_id)
        for s in record.steps(rollout_id)[seen:]:
            seen += 1
            if as_json:
                click.echo(json.dumps({**s, "at": s["at"].isoformat()}, default=str))
            else:
                err = (s["details"] or {}).get("error")
                console.print(f"{s['at']:%H:%M:%S} {s['node']} {s['step']} {s['phase']}" + (f": {err}" if err else ""))
        if r.status != "running":
            break
        time.sleep(interval)
    data = rollout_dict(r)
    return (data, lambda d: console.print(f"rollout {d['id']} {d['status']}: {d['reason']}"),
            rollout_exit(r.status))


@rollout.command()
@click.argument("rollout_id", type=int)
@click.option("--reason", required=True, help="Why it is safe to go on (audited).")
@json_option
@click.pass_obj
def resume(ctx: Context, rollout_id: int, reason: str):
    """Let a halted (or interrupted) rollout go on: its failed nodes are tried again (audited).

    \b
    Example:
      provisioner rollout resume 12 --reason "lab fault cleared, INC-4411"
    Through the operator API the server resumes it; this command follows it as `apply` does.
    """
    remote = remote_for(ctx.settings)
    if remote:
        return follow_remote(remote, remote.call("POST", f"/api/v1/rollouts/{rollout_id}/resume", {"reason": reason}),
                             _render_resumed)
    result = run_interruptible(lambda attach: rollouts.resume(ctx, rollout_id, reason,
                                                              progress=RolloutProgress(True), on_engine=attach))
    return result.as_dict(), _render_resumed, rollout_exit(result.status)


def _render_resumed(d):
    console.print(f"rollout {d['rollout']} {d['status']} in {d['seconds']}s: {len(d['done'])} done, "
                  f"{len(d['failed'])} failed" + (f"\n{d['reason']}" if d["status"] != "done" else ""))


@rollout.command()
@click.argument("rollout_id", type=int)
@click.option("--reason", required=True, help="Why it is given up (audited).")
@json_option
@click.pass_obj
def abort(ctx: Context, rollout_id: int, reason: str):
    """Give a halted (or interrupted) rollout up: the environment is free for a new `apply` (audited).

    \b
    Nodes it had not started are marked skipped; failed nodes stay failed (`plan` shows them
    as `recover`). Example:
      provisioner rollout abort 12 --reason "superseded by a fixed BIOS in the next release"
    """
    remote = remote_for(ctx.settings)
    if remote:
        d = remote.call("POST", f"/api/v1/rollouts/{rollout_id}/abort", {"reason": reason})
    else:
        d = rollout_dict(rollouts.abort(ctx, rollout_id, reason))
    err_console.print(f"rollout {d['id']} aborted; `provisioner apply {d['environment']}` starts a new one")
    return d, lambda d: console.print(f"rollout {d['id']} {d['status']}: {reason}")
