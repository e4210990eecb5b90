"""The pipeline commands that change things: apply, gate, approve, promote, block, unblock, rollback; history.

plan, drift and status (what is, read from the BMCs) are in observe_cmd.py; what a rollout prints
(run here or followed from the operator API) in rollout_output.py.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from provisioner.cli import cli
from provisioner.cli.auth_input import authenticated_actor
from provisioner.cli.output import console, err_console, json_option, table
from provisioner.cli.remote import Remote, RemoteError, quote, remote_for
from provisioner.cli.rollout_output import (
    ENV,
    YES,
    RolloutProgress,
    ask_if_protected,
    confirm_protected,
    environment_on,
    follow_remote,
    rollout_exit,
    run_interruptible,
    say_unread,
)
from provisioner.context import Context
from provisioner.errors import (
    LeaseLost,
    NotAuthenticated,
    PlanOutdated,
    RolloutBusy,
)
from provisioner.operations import blocks, common, nodes, releases, rollouts
from provisioner.plan import PLAN_FORMAT


def _load_saved_plan(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise PlanOutdated(f"{path}: not a readable saved plan ({e}); make one with `provisioner plan ENV -o FILE`") \
            from None
    if not isinstance(doc, dict) or doc.get("format") != PLAN_FORMAT or "environment" not in doc:
        raise PlanOutdated(f"{path}: not a saved plan; make one with `provisioner plan ENV -o FILE`")
    return doc


@cli.command()
@click.argument("target", default="production", metavar="[ENVIRONMENT | PLAN_FILE]")
@YES
@click.option("--wait", is_flag=True, help="If another process is rolling ENVIRONMENT out, wait for it to end "
              "instead of exiting 9.")
@click.option("--detach", is_flag=True, help="Through the operator API: print the rollout's id once it exists "
              "and exit 0; `provisioner rollout watch ID` follows it.")
@json_option
@click.pass_obj
def apply(ctx: Context, target: str, yes: bool, wait: bool, detach: bool):
    """Roll ENVIRONMENT's release out: canary, then waves, with limits and auto-halt.

    \b
    Idempotent: nodes already at the release are left alone, and after an interruption (even
    kill -9) running it again resumes the same rollout from its record without flashing any
    node twice. Nodes whose BMC cannot be read are left alone and listed.
    With PLAN_FILE (from `plan ENV -o FILE`): applies exactly that plan, and refuses if the
    release or any node's firmware (read again now) changed since.
    A protected environment asks for confirmation on a terminal; elsewhere it needs --yes.
    One process at a time per environment, node and BMC (leases in the store).
    While a `provisioner worker` is alive on the store, the rollout is handed to the workers and
    followed here to its end (Ctrl-C interrupts it); otherwise this process runs it.
    Exit codes: 8 the rollout halted, or ENVIRONMENT is halted (sticky: `rollout resume` or
    `rollout abort` first); 9 another process holds ENVIRONMENT (`--wait` waits); 10 it finished
    but left unreadable nodes alone; 130 interrupted by SIGINT/SIGTERM (resumable: run apply again).
    Through the operator API (`provisioner login`): the server runs the rollout and this command
    follows its event stream with the same lines and exit codes; Ctrl-C stops following (exit
    130), not the rollout. --detach prints the rollout's id and exits 0.

    \b
    Examples:
      provisioner apply staging
      provisioner apply production --yes --json
      provisioner plan production -o prod.plan && provisioner apply prod.plan
    """
    remote = remote_for(ctx.settings)
    if remote:
        return _apply_remote(remote, target, yes, wait, detach)
    if detach:
        raise click.UsageError("--detach is for the operator API (`provisioner login`): here apply runs the rollout")
    saved = None
    if target not in ctx.spec.policy.environments and Path(target).is_file():
        saved = _load_saved_plan(Path(target))
        environment = common.known_environment(ctx, saved["environment"])
    else:
        environment = common.known_environment(ctx, target)
    rel = common.release_of(ctx, environment)
    confirm_protected(ctx, environment, f"apply release {rel.short} to {environment}"
                      + (f" (plan {target})" if saved else ""), yes)
    while True:
        if wait:
            rollouts.wait_for_environment(ctx, environment, lambda t: err_console.print(t))
        try:
            if saved is not None:
                result = run_interruptible(lambda attach: rollouts.apply_saved(
                    ctx, saved, progress=RolloutProgress(True), on_engine=attach))
            else:
                result = run_interruptible(lambda attach: rollouts.apply(
                    ctx, environment, progress=RolloutProgress(True), on_engine=attach))
            break
        except LeaseLost:
            raise
        except RolloutBusy:  # taken between the wait and the lease: wait again
            if not wait:
                raise
    return result.as_dict(), _render_apply, rollout_exit(result)


def _render_apply(d):
    console.print(f"rollout {d['rollout']} {d['status']} in {d['seconds']}s: {len(d['done'])} done, "
                  f"{len(d['failed'])} failed, {len(d['held'])} held")
    if d["status"] in ("halted", "interrupted"):
        console.print(f"[red bold]{d['status'].upper()}[/red bold]: {d['reason']}")
        for node, step in sorted(d["interrupted"].items()):
            console.print(f"  {node}: stopped before {step}")
    say_unread(d["unread"], "left alone: nothing was done to them")


def _apply_remote(remote: Remote, target: str, yes: bool, wait: bool, detach: bool):
    """`apply` through the operator API: the same checks in the same order, the server's rollout followed."""
    saved = _load_saved_plan(Path(target)) if Path(target).is_file() else None
    environment = saved["environment"] if saved else target
    env = environment_on(remote, environment)
    if env["release"] is not None:  # else the server says it points at no release, as apply does here
        ask_if_protected(env["protected"], environment, f"apply release {env['release'][:12]} to {environment}"
                         + (f" (plan {target})" if saved else ""), yes)
    told = False
    while True:
        try:
            accepted = remote.call("POST", f"/api/v1/environments/{quote(environment)}/rollouts",
                                   {"plan": saved} if saved else None)
            break
        except RemoteError as e:
            if not wait or e.exit_code != RolloutBusy.exit_code:
                raise
            if not told:
                err_console.print(f"waiting for {environment}: {e}")
                told = True
            time.sleep(1.0)
    return follow_remote(remote, accepted, _render_apply, detach)


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
    remote = remote_for(ctx.settings)
    d = remote.call("GET", f"/api/v1/releases/{quote(release_id)}/gate") if remote else None
    v = None if remote else releases.gate(ctx, release_id)
    data, ok = (d, d["ok"]) if remote else (v.as_dict(), v.ok)

    def render(d):
        f = d["facts"]
        console.print(f"release {d['release_id'][:12]}: {'[green]PASSES[/green]' if d['ok'] else '[red]NOT YET[/red]'} "
                      f"the staging gate")
        console.print(f"  active on: {', '.join(f['active_nodes']) or '-'}\n  soaked: {', '.join(f['soaked_nodes']) or '-'}"
                      f"\n  staging outcomes: {f['done']} done, {f['failed']} failed (ratio {f['success_ratio']})"
                      f"\n  approvals: {', '.join(f['approvers']) or '-'} (author {f['author']})")
        for m in d["missing"]:
            console.print(f"  [yellow]missing: {m}[/yellow]")

    return data, render, 0 if ok else 1


@cli.command()
@click.argument("release_id")
@click.option("--comment", default="", help="Why you approve (or withdraw).")
@click.option("--withdraw", is_flag=True, help="Take your approval back.")
@click.option("--token", envvar="PROVISIONER_TOKEN", default=None,
              help="Your personal API token (env PROVISIONER_TOKEN) instead of a password.")
@click.option("--account", default=None, metavar="NAME",
              help="On the server host: the account that approves; its password is asked for (or read with "
                   "--password-stdin) and checked [default: your login name].")
@click.option("--password-stdin", is_flag=True, help="Read the --account's password from stdin.")
@json_option
@click.pass_obj
def approve(ctx: Context, release_id: str, comment: str, withdraw: bool, token: str | None, account: str | None,
            password_stdin: bool):
    """Record one approval of RELEASE_ID at the staging gate, as your account.

    \b
    The approval is made by an authenticated account, never by a typed name: through the
    operator API (`provisioner login`), the signed-in account; on the server host, your API token
    (--token or PROVISIONER_TOKEN), or --account NAME with its password, asked for on the
    terminal or read with --password-stdin. It is recorded in the audit chain, which is what the
    gate counts. Refused (exit 3, and audited) for the release's author, a role other than
    approver/admin, a release that failed on staging or pins a blocked version; a wrong password
    or token is exit 11. The same person approving twice counts once.

    \b
    Examples:
      provisioner approve 3f1c --comment "staging clean for 24h"      # signed in with `login`
      provisioner approve 3f1c --account bob                          # on the server host
      echo "$PW" | provisioner approve 3f1c --account bob --password-stdin --withdraw
    """
    remote = remote_for(ctx.settings)
    if remote:  # the API's account is the token's: no password here
        if account or password_stdin:
            raise click.UsageError("--account and --password-stdin are for the server host; through the operator "
                                   "API you approve as the signed-in account")
        result = remote.call("DELETE" if withdraw else "POST", f"/api/v1/releases/{quote(release_id)}/approvals",
                             {"comment": comment})
        return _approval_output(result, withdraw)
    try:
        who = authenticated_actor(ctx, token, account, password_stdin)
    except NotAuthenticated as e:  # a refused approval is audited, a failed sign-in included
        ctx.store.audit(ctx.settings.actor, "release.approve.refused", ctx.store.resolve_release_id(release_id),
                        {"reason": str(e)})
        raise
    return _approval_output(releases.approve(ctx, release_id, who, comment, withdraw=withdraw).as_dict(), withdraw)


def _approval_output(result: dict, withdraw: bool):
    changed = result["changed"]
    data = {"release": result["release"], "approver": result["approver"],
            "withdrawn" if withdraw else "recorded": changed, "approvers": result["approvers"]}

    def render(d):
        if withdraw:
            head = "approval withdrawn" if changed else "no approval of yours to withdraw"
        else:
            head = "approval recorded" if changed else "already approved (counts once)"
        console.print(f"{head}: {d['approver']} for {d['release'][:12]}; approvers now: "
                      f"{', '.join(d['approvers']) or '-'}")

    return data, render


@cli.command()
@click.argument("release_id")
@click.option("--to", "to", required=True, help="Environment to point at the release (declared in policy.yaml).")
@json_option
@click.pass_obj
def promote(ctx: Context, release_id: str, to: str):
    """Point an environment at RELEASE_ID (production only after the staging gate passes).

    \b
    Examples:
      provisioner promote 3f1c --to staging
      provisioner promote 3f1c --to production
    """
    remote = remote_for(ctx.settings)
    if remote:
        data = remote.call("PUT", f"/api/v1/environments/{quote(to)}/release", {"release": release_id})
    else:
        previous = releases.promote(ctx, release_id, to)
        data = {"environment": to, "release": ctx.store.get_release(release_id).id, "previous": previous}
    return data, lambda d: console.print(f"{to} → {d['release'][:12]} (was {(d['previous'] or '-')[:12]}); "
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
    remote = remote_for(ctx.settings)
    if remote:
        data = remote.call("POST", "/api/v1/blocks", {"component": component, "version": version, "reason": reason,
                                                      "model": model, "incident": incident})
    else:
        data = blocks.block(ctx, component, version, reason, model=model, incident=incident).as_dict()

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
@click.option("--confirm", is_flag=True, help="Through the operator API: confirm another person's request.")
@json_option
@click.pass_obj
def unblock_cmd(ctx: Context, component: str, version: str, reason: str, confirm: bool):
    """Lift a block (audited); held nodes that run nothing blocked any more are released (ready).

    \b
    With direct store access (the server host's root) it is lifted at once. As an account
    (signed in with `provisioner login`, or PROVISIONER_TOKEN) it takes two people: `unblock`
    requests it, and another approver's `unblock --confirm` lifts it.
    Examples:
      provisioner unblock bios 1.20.0 --reason "vendor fix confirmed"
      provisioner unblock bios 1.20.0 --reason "checked the fix" --confirm     # the second person
    """
    remote = remote_for(ctx.settings)
    if remote:
        body = {"component": component, "version": version, "reason": reason}
        if not confirm:
            req = remote.call("POST", "/api/v1/unblock-requests", body)
            return req, lambda d: console.print(
                f"unblock of {component} {version} requested by {d['requested_by']} (audit #{d['audit_seq']}); "
                f"another approver confirms it: `provisioner unblock {component} {version} --reason ... --confirm`")
        data = remote.call("POST", "/api/v1/unblock-requests/confirm", body)
    elif getattr(ctx.actor, "authenticated", False):  # a token on the server host: two people, as over the API
        if not confirm:
            req = blocks.unblock_request(ctx, component, version, reason).as_dict()
            return req, lambda d: console.print(
                f"unblock of {component} {version} requested by {d['requested_by']} (audit #{d['audit_seq']}); "
                f"another approver confirms it: `provisioner unblock {component} {version} --reason ... --confirm`")
        data = blocks.unblock_confirm(ctx, component, version, reason).as_dict()
    elif confirm:
        raise click.UsageError("--confirm confirms another person's request: sign in (`provisioner login`) or "
                               "use PROVISIONER_TOKEN; direct store access lifts a block at once")
    else:
        data = blocks.unblock(ctx, component, version, reason).as_dict()

    def render(d):
        console.print(f"lifted {d['lifted']} block(s) on {component} {version}" if d["lifted"] else "no such block")
        if d["released"]:
            console.print(f"  released (nothing they run is blocked): {', '.join(d['released'])}")

    return data, render


@cli.command()
@ENV
@click.option("--to", "to", default=None, help="Release to go back to [default: the previous one].")
@YES
@json_option
@click.pass_obj
def rollback(ctx: Context, environment: str, to: str | None, yes: bool):
    """Point ENVIRONMENT back at its previous release and apply it as a rollout.

    \b
    Refused, with the version and what to do, if that release pins a version blocked since.
    --to another release: one that was active in ENVIRONMENT before, or has passed the gate.
    A protected environment asks for confirmation on a terminal; elsewhere it needs --yes.
    Through the operator API the server runs it; this command follows it as `apply` does.
    Example:
      provisioner rollback production --yes
    """
    doing = f"roll {environment} back" + (f" to {to}" if to else "")
    remote = remote_for(ctx.settings)
    if remote:
        ask_if_protected(environment_on(remote, environment)["protected"], environment, doing, yes)
        accepted = remote.call("POST", f"/api/v1/environments/{quote(environment)}/rollback", {"to": to})
        return follow_remote(remote, accepted, _render_rollback)
    common.known_environment(ctx, environment)
    confirm_protected(ctx, environment, doing, yes)
    result = run_interruptible(lambda attach: rollouts.rollback(ctx, environment, to, progress=RolloutProgress(True),
                                                                on_engine=attach))
    return result.as_dict(), _render_rollback, rollout_exit(result)


def _render_rollback(d):
    console.print(f"rollback rollout {d['rollout']} {d['status']} in {d['seconds']}s: "
                  f"{len(d['done'])} re-provisioned, {len(d['failed'])} failed")
    if d["status"] == "halted":
        console.print(f"[red bold]HALTED[/red bold]: {d['reason']}")
    say_unread(d["unread"], "left alone: nothing was done to them")


@cli.command()
@click.option("--limit", default=40, show_default=True)
@json_option
@click.pass_obj
def history(ctx: Context, limit: int):
    """Every change in order: releases, promotions, rollouts, blocks, approvals, rollbacks."""
    remote = remote_for(ctx.settings)
    data = remote.call("GET", "/api/v1/history", query={"limit": limit}) if remote else nodes.history(ctx, limit)

    def render(d):
        table("rollouts", ["id", "env", "kind", "release", "status", "by", "reason"],
              [[r["id"], r["environment"], r["kind"], r["release"][:12], r["status"], r["by"], r["reason"][:70]]
               for r in d["rollouts"]])
        table("history", ["#", "at", "who", "what", "subject", "details"],
              [[e["seq"], e["at"][11:19], e["actor"], e["action"], e["subject"][:16],
                ", ".join(f"{k}={str(v)[:40]}" for k, v in e["details"].items() if v)] for e in d["audit"]])

    return data, render
