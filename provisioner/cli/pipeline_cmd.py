"""The pipeline commands: plan, apply, gate, approve, promote, block, unblock, rollback, drift, status, history."""

from __future__ import annotations

import sys

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from provisioner import pipeline
from provisioner.cli import cli
from provisioner.cli.output import console, err_console, json_option, table
from provisioner.context import Context
from provisioner.errors import LeaseLost, ProvisionerError, RolloutBusy, RolloutHalted, SpecError
from provisioner.rollout.signals import EXIT_INTERRUPTED, SignalStop

ENV = click.argument("environment", default="production")


class RolloutProgress:
    """A progress bar for people (stderr), nothing for --json. It knows its total (the rollout's
    node count) and shows the step each running node is at."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.bar_enabled = enabled and sys.stderr.isatty()
        self.bar = None
        self.lines: list[str] = []
        self.phase: dict[str, str] = {}  # running node -> its current step

    def __call__(self, e: dict) -> None:
        ev = e["event"]
        if ev == "total" and self.bar is None and self.bar_enabled:
            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), console=err_console, transient=True)
            self.bar.start()
            self.task = self.bar.add_task("re-provisioning", total=e["nodes"], completed=e["done"])
        elif ev == "node_step":
            self.phase[e["node"]] = e["step"]
            self._describe()
        elif ev == "created":
            counts = ", ".join(f"{v} {k}" for k, v in sorted(e["counts"].items()))
            self._say(f"rollout {e['rollout']} created: {counts or 'nothing to do'}")
            for node, err in sorted(e.get("unreachable", {}).items()):
                self._say(f"  [yellow]{node}: BMC not read ({err})[/yellow]")
        elif ev == "resume":
            kind = f" ({e['kind']})" if e.get("kind") not in (None, "apply") else ""
            self._say(f"resuming rollout {e['rollout']}{kind} from its record")
        elif ev == "wave":
            name = "canary" if e["wave"] == 0 else f"wave {e['wave']}"
            self._say(f"{name}: {', '.join(e['nodes'])}")
        elif ev == "node_done":
            self._advance(e["node"])
        elif ev == "node_failed":
            self._say(f"  [red]✗ {e['node']}: {e['error']}[/red]")
            self._advance(e["node"])
        elif ev == "node_halted":
            self._say(f"  [yellow]‖ {e['node']} stopped before {e['step']}[/yellow]")
            self.phase.pop(e["node"], None)
        elif ev in ("done", "halted", "interrupted", "lost"):
            if self.bar:
                self.bar.stop()

    def _describe(self) -> None:
        if self.bar:
            running = " ".join(f"{n}:{s}" for n, s in sorted(self.phase.items())[:4])
            more = f" +{len(self.phase) - 4}" if len(self.phase) > 4 else ""
            self.bar.update(self.task, description=f"re-provisioning {running}{more}")

    def _advance(self, node: str):
        self.phase.pop(node, None)
        if self.bar:
            self.bar.advance(self.task)
            self._describe()

    def _say(self, text: str) -> None:
        if self.enabled:
            err_console.print(text)


def _render_plan(d):
    console.print(f"plan for {d['environment']} at release {d['release'][:12]}: "
                  + ", ".join(f"{v} {k}" for k, v in sorted(d["counts"].items())))
    rows = [[n["node"], n["rack"], n["model"], n["action"], n["reason"]] for n in d["nodes"] if n["action"] != "nothing"]
    if rows:
        table(None, ["node", "rack", "model", "action", "why"], rows)
    for node, err in sorted(d.get("unreachable", {}).items()):
        console.print(f"[yellow]{node}: BMC not read ({err}); planned from the last known state[/yellow]")


@cli.command()
@ENV
@click.option("--no-refresh", is_flag=True, help="Plan from the last stored BMC reads instead of reading every BMC now.")
@json_option
@click.pass_obj
def plan(ctx: Context, environment: str, no_refresh: bool):
    """What would change in ENVIRONMENT, node by node, and why.

    \b
    Exit codes like `terraform plan -detailed-exitcode`: 0 nothing to do, 2 changes, 1 error.
    Never plans a flash to a blocked or unapproved version, nor of a component at its pin.

    \b
    Examples:
      provisioner plan production
      provisioner plan staging --json | jq '.nodes[] | select(.action != "nothing")'
    """
    try:
        p, errors = pipeline.plan(ctx, environment, refresh=not no_refresh)
    except ProvisionerError as e:
        # 2 means "changes" here: every error, a spec error (normally 2) included, must be 1
        for line in e.problems if isinstance(e, SpecError) else [e]:
            click.echo(f"error: {line}", err=True)
        raise click.exceptions.Exit(1) from None
    data = {**p.as_dict(), "unreachable": errors}
    return data, _render_plan, 2 if p.changes else 0


def rollout_exit(status: str) -> int:
    return {"halted": RolloutHalted.exit_code, "interrupted": EXIT_INTERRUPTED}.get(status, 0)


def run_interruptible(start):
    """Run `start(on_engine)` with SIGINT/SIGTERM handled as rollout/signals.py says."""
    with SignalStop(lambda text: err_console.print(f"[yellow]{text}[/yellow]")) as stop:
        return start(stop.attach)


@cli.command()
@ENV
@click.option("--wait", is_flag=True, help="If another process is rolling ENVIRONMENT out, wait for it to end "
              "instead of exiting 9.")
@json_option
@click.pass_obj
def apply(ctx: Context, environment: str, wait: bool):
    """Roll ENVIRONMENT's release out: canary, then waves, with limits and auto-halt.

    \b
    Idempotent: nodes already at the release are left alone, and after an interruption (even
    kill -9) running it again resumes the same rollout from its record without flashing any
    node twice. One process at a time per environment, node and BMC (leases in the store).
    Exit codes: 8 the rollout halted, or ENVIRONMENT is halted (sticky: `rollout resume` or
    `rollout abort` first); 9 another process holds ENVIRONMENT (`--wait` waits); 130
    interrupted by SIGINT/SIGTERM (resumable: run apply again).

    \b
    Examples:
      provisioner apply staging
      provisioner apply production --json
    """
    while True:
        if wait:
            pipeline.wait_for_environment(ctx, environment, lambda t: err_console.print(t))
        try:
            result = run_interruptible(lambda attach: pipeline.apply(
                ctx, environment, progress=RolloutProgress(True), on_engine=attach))
            break
        except LeaseLost:
            raise
        except RolloutBusy:  # taken between the wait and the lease: wait again
            if not wait:
                raise
    data = result.as_dict()

    def render(d):
        console.print(f"rollout {d['rollout']} {d['status']} in {d['seconds']}s: {len(d['done'])} done, "
                      f"{len(d['failed'])} failed, {len(d['held'])} held")
        if d["status"] in ("halted", "interrupted"):
            console.print(f"[red bold]{d['status'].upper()}[/red bold]: {d['reason']}")
            for node, step in sorted(d["interrupted"].items()):
                console.print(f"  {node}: stopped before {step}")

    return data, render, rollout_exit(result.status)




@cli.command("gate")
@click.argument("release_id")
@json_option
@click.pass_obj
def gate_cmd(ctx: Context, release_id: str):
    """The staging evidence for RELEASE_ID and what is still missing before production.

    \b
    Example:
      provisioner gate 3f1c
    """
    v = pipeline.gate(ctx, release_id)

    def render(d):
        f = d["facts"]
        console.print(f"release {d['release_id'][:12]}: {'[green]PASSES[/green]' if d['ok'] else '[red]NOT YET[/red]'} "
                      f"the staging gate")
        console.print(f"  active on: {', '.join(f['active_nodes']) or '-'}\n  soaked: {', '.join(f['soaked_nodes']) or '-'}"
                      f"\n  staging outcomes: {f['done']} done, {f['failed']} failed (ratio {f['success_ratio']})"
                      f"\n  approvals: {', '.join(f['approvers']) or '-'} (author {f['author']})")
        for m in d["missing"]:
            console.print(f"  [yellow]missing: {m}[/yellow]")

    return v.as_dict(), render, 0 if v.ok else 1


@cli.command()
@click.argument("release_id")
@click.option("--as", "who", required=True, help="The approver's name (not the release's author).")
@click.option("--comment", default="", help="Why you approve.")
@json_option
@click.pass_obj
def approve(ctx: Context, release_id: str, who: str, comment: str):
    """Record one approval of RELEASE_ID at the staging gate.

    \b
    The author cannot approve; the same person approving twice counts once.
    Example:
      provisioner approve 3f1c --as alice --comment "staging clean for 24h"
    """
    created = pipeline.approve(ctx, release_id, who, comment)
    rel = ctx.store.get_release(release_id)
    data = {"release": rel.id, "approver": who, "recorded": created,
            "approvers": [a["approver"] for a in ctx.store.approvals(rel.id)]}

    def render(d):
        console.print(f"{'approval recorded' if d['recorded'] else 'already approved (counts once)'}: {who} for "
                      f"{d['release'][:12]}; approvers now: {', '.join(d['approvers'])}")

    return data, render


@cli.command()
@click.argument("release_id")
@click.option("--to", "to", required=True, help="Environment to point at the release (e.g. staging, production).")
@json_option
@click.pass_obj
def promote(ctx: Context, release_id: str, to: str):
    """Point an environment at RELEASE_ID (production only after the staging gate passes).

    \b
    Examples:
      provisioner promote 3f1c --to staging
      provisioner promote 3f1c --to production
    """
    previous = pipeline.promote(ctx, release_id, to)
    rel = ctx.store.get_release(release_id)
    data = {"environment": to, "release": rel.id, "previous": previous}
    return data, lambda d: console.print(f"{to} → {rel.short} (was {(previous or '-')[:12]}); "
                                         f"`provisioner apply {to}` rolls it out")


@cli.command("block")
@click.argument("component")
@click.argument("version")
@click.option("--reason", required=True, help="Why: what breaks, and the incident.")
@click.option("--model", default=None, help="Only on this hardware model [default: every model].")
@click.option("--incident", default=None, help="Incident reference, e.g. INC-4411.")
@json_option
@click.pass_obj
def block_cmd(ctx: Context, component: str, version: str, reason: str, model: str | None, incident: str | None):
    """Block a firmware version everywhere, at once.

    \b
    Running rollouts that would flash it halt; nodes running it are marked for re-provisioning
    and the netboot gate holds them; no release pinning it can be built, promoted or applied.
    Example:
      provisioner block bios 1.20.0 --reason "boot loop, INC-4411" --incident INC-4411
    """
    data = pipeline.block(ctx, component, version, reason, model=model, incident=incident)

    def render(d):
        console.print(f"blocked {component} {version}" + ("" if d["created"] else " (already blocked)"))
        if d["marked"]:
            console.print(f"  held for re-provisioning: {', '.join(d['marked'])}")
        if d["rollouts_halting"]:
            console.print(f"  halting rollout(s): {', '.join(map(str, d['rollouts_halting']))}")

    return data, render


@cli.command("unblock")
@click.argument("component")
@click.argument("version")
@click.option("--reason", required=True, help="Why the version is safe again.")
@json_option
@click.pass_obj
def unblock_cmd(ctx: Context, component: str, version: str, reason: str):
    """Lift a block (audited); held nodes that run nothing blocked any more are released (ready).

    \b
    Example:
      provisioner unblock bios 1.20.0 --reason "vendor fix confirmed"
    """
    data = pipeline.unblock(ctx, component, version, reason)

    def render(d):
        console.print(f"lifted {d['lifted']} block(s) on {component} {version}" if d["lifted"] else "no such block")
        if d["released"]:
            console.print(f"  released (nothing they run is blocked): {', '.join(d['released'])}")

    return data, render


@cli.command()
@ENV
@click.option("--to", "to", default=None, help="Release to go back to [default: the previous one].")
@json_option
@click.pass_obj
def rollback(ctx: Context, environment: str, to: str | None):
    """Point ENVIRONMENT back at its previous release and apply it as a rollout.

    \b
    Refused, with the version and what to do, if that release pins a version blocked since.
    Example:
      provisioner rollback production
    """
    result = run_interruptible(lambda attach: pipeline.rollback(ctx, environment, to, progress=RolloutProgress(True),
                                                                on_engine=attach))
    data = result.as_dict()
    return data, lambda d: console.print(f"rollback rollout {d['rollout']} {d['status']} in {d['seconds']}s: "
                                         f"{len(d['done'])} re-provisioned, {len(d['failed'])} failed"), \
        rollout_exit(result.status)


@cli.command()
@click.option("--fix/--no-fix", default=None,
              help="Re-provision drifted nodes [default: the policy's drift_action, reprovision or report].")
@json_option
@click.pass_obj
def drift(ctx: Context, fix: bool | None):
    """Nodes whose BMC reports firmware other than their release pins (read from every BMC now).

    \b
    Drift is corrected by re-provisioning, never by patching: with the policy's
    drift_action "reprovision" (or --fix) drifted nodes are re-provisioned at once.
    Exit 2 when drift was found and left in place.
    Examples:
      provisioner drift --no-fix      # report only
      provisioner drift               # report, and re-provision as the policy says
    """
    if fix is None:
        fix = ctx.spec.policy.rollout.drift_action == "reprovision"
    items, errors = pipeline.drift(ctx)
    data = {"drift": [i.as_dict() for i in items], "unreachable": errors, "fixed": None}
    if fix and items:
        by_env: dict[str, set] = {}
        for i in items:
            by_env.setdefault(i.environment, set()).add(i.node)
        data["fixed"] = {env: pipeline.apply(ctx, env, kind="drift", reason="drift correction", only=nodes,
                                             progress=RolloutProgress(True)).as_dict() for env, nodes in by_env.items()}

    def render(d):
        if not d["drift"]:
            console.print("no drift: every provisioned node reports its release's pins")
        else:
            table("drift", ["node", "env", "component", "observed", "pinned"],
                  [[i["node"], i["environment"], i["component"], i["observed"], i["pinned"]] for i in d["drift"]])
        for env, r in (d["fixed"] or {}).items():
            console.print(f"{env}: re-provisioned {len(r['done'])}, failed {len(r['failed'])} ({r['status']})")

    return data, render, 2 if items and not fix else 0


@cli.command()
@click.argument("environment", required=False)
@json_option
@click.pass_obj
def status(ctx: Context, environment: str | None):
    """Where each node stands: state, release, firmware against the pins."""
    rows = pipeline.compliance(ctx, [environment] if environment else None)

    def render(d):
        table("nodes", ["node", "env", "state", "release", "compliant", "firmware (observed/pinned)"],
              [[r["node"], r["environment"], r["state"], (r["node_release"] or "-")[:12],
                "yes" if r["compliant"] else "NO",
                " ".join(f"{k}={v['observed']}" + ("" if v["observed"] == v["pinned"] else f"(≠{v['pinned']})")
                         for k, v in r["components"].items())] for r in d])

    return rows, render


@cli.command()
@click.option("--limit", default=40, show_default=True)
@json_option
@click.pass_obj
def history(ctx: Context, limit: int):
    """Every change in order: releases, promotions, rollouts, blocks, approvals, rollbacks."""
    from provisioner.rollout.record import RolloutRecord

    entries = ctx.store.audit_entries(limit)
    rollouts = [{"id": r.id, "environment": r.environment, "release": r.release_id, "kind": r.kind,
                 "status": r.status, "reason": r.reason, "by": r.by,
                 "created_at": r.created_at.isoformat()} for r in RolloutRecord(ctx.store).rollouts()]
    data = {"audit": entries, "rollouts": rollouts}

    def render(d):
        table("rollouts", ["id", "env", "kind", "release", "status", "by", "reason"],
              [[r["id"], r["environment"], r["kind"], r["release"][:12], r["status"], r["by"], r["reason"][:70]]
               for r in d["rollouts"]])
        table("history", ["#", "at", "who", "what", "subject", "details"],
              [[e["seq"], e["at"][11:19], e["actor"], e["action"], e["subject"][:16],
                ", ".join(f"{k}={str(v)[:40]}" for k, v in e["details"].items() if v)] for e in d["audit"]])

    return data, render
