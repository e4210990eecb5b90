"""Rollouts: apply (or a saved plan), resume, abort, roll back; and what a rollout is doing.

An operation that flashes nodes runs in the calling thread until the rollout ends; `progress`
receives the engine's events and `on_engine` the engine itself (to stop it on a signal).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from provisioner.context import Context
from provisioner.errors import PlanOutdated, PolicyViolation, ReleaseError, RolloutBusy, RolloutHalted
from provisioner.operations.common import (
    active_blocks,
    authorise,
    endpoints,
    known_environment,
    refuse_blocked,
    release_of,
)
from provisioner.operations.nodes import observe, plan, plan_observed
from provisioner.operations.releases import gate
from provisioner.plan import Plan, make_plan, pinned_blocked, stale_reasons
from provisioner.policy.authz import Action, Facts
from provisioner.policy.gate import staging_environment
from provisioner.releases.view import ReleaseView
from provisioner.rollout import handoff
from provisioner.rollout.engine import RolloutResult
from provisioner.rollout.lease import Leases, environment_key
from provisioner.rollout.record import RolloutRecord
from provisioner.states import UNFINISHED


def apply(ctx: Context, env: str, *, kind: str = "apply", reason: str = "", progress: Callable | None = None,
          only: set[str] | None = None, refresh: bool = True, planned: tuple[Plan, dict] | None = None,
          leases: Leases | None = None, point: tuple[str, str] | None = None,
          on_engine: Callable | None = None) -> RolloutResult:
    """Roll the environment's release out (or resume the unfinished rollout of it).

    One process at a time: the environment's lease is taken in the transaction that creates (or
    resumes) the rollout; RolloutBusy names the holder. A halted rollout of the same release is
    sticky: RolloutHalted until `rollout resume`/`rollout abort`, a rollback or a new release.
    `point` (a rollback's reason and target) re-points the environment in that same transaction.
    Nodes whose BMC cannot be read are left alone (not in the rollout) and listed in the result's
    `unread`. `planned`: a (plan, unread BMCs) already checked against the BMCs (`apply FILE`).
    """
    known_environment(ctx, env)
    authorise(ctx, ctx.actor, Action.APPLY, env)
    rel = ctx.store.get_release(point[1]) if point else release_of(ctx, env)
    refuse_blocked(ctx, rel, "apply")
    broken = ctx.artifacts.check_release(rel.document)  # before any BMC is read or power-cycled
    if broken:
        raise ReleaseError(f"cannot apply release {rel.short}: {len(broken)} of its artifacts are not intact in "
                           f"the store ({broken[0]}); run `provisioner release build` from its spec again")
    leases = leases or Leases(ctx.store)
    busy = leases.peek(environment_key(env))  # fail fast, before reading every BMC
    if busy:
        raise RolloutBusy(f"environment {env} is busy: {busy['purpose']}, held by {busy['holder']} since "
                          f"{busy['since'][:19].replace('T', ' ')} UTC; `provisioner rollout watch` follows it, "
                          f"`apply --wait` waits for it", holder=busy["holder"], since=busy["since"])
    record = RolloutRecord(ctx.store, leases, env)
    pol = rel.document["policy"]["rollout"]
    open_ = record.open_rollout(env)
    errors: dict[str, str] = {}
    leases.start_heartbeat()
    try:
        if (open_ is not None and open_.release_id == rel.id and point is None and planned is None
                and open_.status != "halted"):
            rid = record.resume(open_.id, ctx.actor).id
            if progress:
                progress({"event": "resume", "rollout": rid, "kind": open_.kind})
        else:
            if open_ is not None and open_.status == "halted" and open_.release_id == rel.id and point is None:
                raise RolloutHalted(
                    f"{env} is halted by rollout {open_.id} ({open_.reason}); nothing is flashed there until "
                    f"`provisioner rollout resume {open_.id} --reason ...`, `provisioner rollout abort {open_.id} "
                    f"--reason ...`, a rollback or a new release")
            p, errors = planned or _plan_for(ctx, env, rel, refresh)
            # an unread BMC: its node's firmware is unknown, so nothing is planned for it (not even a flash)
            p = Plan(p.release_id, p.environment, tuple(n for n in p.nodes if n.node not in errors
                                                        and n.action != "unknown" and (only is None or n.node in only)))
            for n in p.nodes:  # read just now at this release's pins and image: at the release, untouched
                if n.action == "nothing":
                    ctx.store.update_node(n.node, release_id=rel.id)
            rid = record.create(p, kind, ctx.actor, reason or f"{kind} {rel.short} to {env}",
                                pol["canary"], pol["wave_size"], point=point)
            if progress:
                progress({"event": "created", "rollout": rid, "counts": p.counts(), "unreachable": errors,
                          "kind": kind})
        engine = handoff.engine_class(ctx)(ctx.store, ctx.artifacts, endpoints(ctx), ReleaseView.of(rel),
                                           actor=ctx.actor, progress=progress, leases=leases, environment=env)
        if on_engine:
            on_engine(engine, rid)
        result = engine.run(rid)
        result.unread = {n: e for n, e in errors.items() if only is None or n in only}
        return result
    finally:
        leases.stop()
        if not leases.lost:
            leases.release_all()


def _plan_for(ctx: Context, env: str, rel, refresh: bool) -> tuple[Plan, dict]:
    if ctx.store.current_release_id(env) == rel.id:
        return plan(ctx, env, refresh)
    observed, errors = observe(ctx, env, refresh)  # a rollback plans against its target release
    return make_plan(ReleaseView.of(rel), env, observed, active_blocks(ctx), unread=errors), errors


def wait_for_environment(ctx: Context, env: str, say: Callable[[str], None], poll: float = 1.0) -> None:
    """`apply --wait`: return once no live process holds the environment's lease."""
    leases, told = Leases(ctx.store), False
    while (busy := leases.peek(environment_key(env))) is not None:
        if not told:
            say(f"waiting for {env}: {busy['purpose']}, held by {busy['holder']} since {busy['since'][:19]}")
            told = True
        time.sleep(poll)


def apply_saved(ctx: Context, saved: dict, *, progress: Callable | None = None,
                on_engine: Callable | None = None) -> RolloutResult:
    """Apply exactly a plan saved by `plan ENV -o FILE`: refused (PlanOutdated) if the environment's
    release or any node's firmware, read again now, differs from what the plan was made from."""
    env = known_environment(ctx, str(saved.get("environment")))
    rel = release_of(ctx, env)
    p, unread, observed = plan_observed(ctx, env)
    stale = stale_reasons(saved, rel.id, p, unread, observed)
    if stale:
        raise PlanOutdated(f"the saved plan no longer holds: {'; '.join(stale)}; "
                           f"make a new one with `provisioner plan {env} -o FILE`")
    keep = {n for n, fw in saved["observed"].items() if fw is not None}
    left_alone = {n: e for n, e in saved.get("unreachable", {}).items()}
    return apply(ctx, env, reason=f"apply saved plan of {rel.short} to {env}", progress=progress,
                 planned=(Plan(p.release_id, env, tuple(n for n in p.nodes if n.node in keep)), left_alone),
                 on_engine=on_engine)

def _stopped_rollout(ctx: Context, rid: int, done: str):
    """The halted or interrupted rollout an operator may resume or abort (the matrix first)."""
    authorise(ctx, ctx.actor, Action.APPLY, f"rollout {rid}")
    record = RolloutRecord(ctx.store)
    r = record.rollout(rid)
    if r is None:
        raise ReleaseError(f"no rollout {rid}; `provisioner rollout list` shows them")
    if r.status not in ("halted", "interrupted"):
        raise PolicyViolation(f"rollout {rid} is {r.status}: only a halted or interrupted rollout can be {done}")
    return record, r


def resume(ctx: Context, rid: int, reason: str, progress: Callable | None = None,
           on_engine: Callable | None = None) -> RolloutResult:
    """`rollout resume ID --reason`: an operator lets a halted rollout go on (failed nodes are retried)."""
    record, r = _stopped_rollout(ctx, rid, "resumed")
    if ctx.store.current_release_id(r.environment) != r.release_id:
        raise PolicyViolation(f"rollout {rid} applied {r.release_id[:12]}, but {r.environment} now points at "
                              f"another release: `provisioner apply {r.environment}` rolls that one out")
    rel = ctx.store.get_release(r.release_id)
    refuse_blocked(ctx, rel, "resume")
    leases = Leases(ctx.store)
    record = RolloutRecord(ctx.store, leases, r.environment)
    leases.start_heartbeat()
    try:
        record.resume(rid, ctx.settings.actor, reason=reason, retry_failed=True)
        if progress:
            progress({"event": "resume", "rollout": rid, "kind": r.kind})
        engine = handoff.engine_class(ctx)(ctx.store, ctx.artifacts, endpoints(ctx), ReleaseView.of(rel),
                                           actor=ctx.settings.actor, progress=progress, leases=leases,
                                           environment=r.environment)
        if on_engine:
            on_engine(engine, rid)
        return engine.run(rid)
    finally:
        leases.stop()
        if not leases.lost:
            leases.release_all()


def abort(ctx: Context, rid: int, reason: str):
    """`rollout abort ID --reason`: give a halted or interrupted rollout up; the environment is free."""
    record, r = _stopped_rollout(ctx, rid, "aborted")
    leases = Leases(ctx.store)
    try:
        return RolloutRecord(ctx.store, leases, r.environment).abort(rid, ctx.settings.actor, reason)
    finally:
        leases.release_all()

def rollback(ctx: Context, env: str, to: str | None = None, progress: Callable | None = None,
             on_engine: Callable | None = None) -> RolloutResult:
    """Point `env` back at its previous release (one person), or `to` a release that was active
    there before or passes the staging gate, and apply it."""
    known_environment(ctx, env)
    current = ctx.store.current_release_id(env)
    history = ctx.store.environment_history(env)
    if to:
        target = ctx.store.get_release(to)
        was_active = any(h["release_id"] == target.id for h in history)
        verdict = None if was_active or env == staging_environment(ctx.site.floor()) else gate(ctx, target.id, target=env)
        missing = "; ".join(verdict.missing) if verdict else ""
        authorise(ctx, ctx.actor, Action.ROLLBACK_TO, env,
                  Facts(was_active_before=was_active, gate_passes=verdict is None or verdict.ok),
                  refusal=lambda d: d.reason if d.by_role or not missing
                  else f"cannot roll {env} back to {target.short}: it was never active in {env} and has not "
                       f"passed the staging gate ({missing}); promote it through staging instead")
    else:
        hist = [h for h in history if h["release_id"] != current]
        if not hist:
            raise ReleaseError(f"{env} has no previous release to roll back to")
        target = ctx.store.get_release(hist[-1]["release_id"])
        authorise(ctx, ctx.actor, Action.ROLLBACK_PREVIOUS, env)
    bad = pinned_blocked(ReleaseView.of(target), active_blocks(ctx))
    if bad:
        m, c, v, b = bad[0]
        raise PolicyViolation(f"cannot roll {env} back to {target.short}: it pins {m} {c} {v}, blocked since "
                              f"({b.reason}); build a release with another {c} version and promote it instead")
    # the environment is re-pointed in the transaction that records the rollback's rollout (and takes
    # the environment's lease): killed at any moment, it resumes as a rollback, or never started
    return apply(ctx, env, kind="rollback", reason=f"rollback to {target.short}", progress=progress,
                 point=(f"rollback from {(current or '-')[:12]}", target.id), on_engine=on_engine)



def rollout_dict(r) -> dict:
    return {"id": r.id, "environment": r.environment, "release": r.release_id, "kind": r.kind, "status": r.status,
            "reason": r.reason, "by": r.by, "created_at": r.created_at.isoformat()[:19],
            "finished_at": r.finished_at.isoformat()[:19] if r.finished_at else None}


def rollouts(ctx: Context, environment: str | None = None, limit: int = 20) -> list[dict]:
    """Rollouts, newest last."""
    return [rollout_dict(r) for r in RolloutRecord(ctx.store).rollouts(environment, limit)]


def rollout_detail(ctx: Context, rid: int) -> dict:
    """A rollout, its holder if it runs, and per node: wave, action, status, each step's begin/end/outcome."""
    record = RolloutRecord(ctx.store)
    r = record.rollout(rid)
    if r is None:
        raise ReleaseError(f"no rollout {rid}; `provisioner rollout list` shows them")
    steps: dict[str, dict[str, dict]] = {}
    for s in record.steps(rid):
        mine = steps.setdefault(s["node"], {}).setdefault(s["step"], {"step": s["step"], "begin": None, "end": None,
                                                                      "outcome": "running"})
        at = s["at"].isoformat()[:23]
        if s["phase"] == "begin":
            mine.update(begin=at, end=None, outcome="running")
        else:
            mine.update(end=at, outcome={"end": "ok", "skip": "skipped"}.get(s["phase"], s["phase"]),
                        error=(s["details"] or {}).get("error"))
    holder = Leases(ctx.store).peek(environment_key(r.environment)) if r.status in UNFINISHED else None
    nodes = [{"node": n.node, "wave": n.wave, "action": n.action, "status": n.status, "step": n.step,
              "error": n.error, "steps": list(steps.get(n.node, {}).values())} for n in record.nodes(rid)]
    return {**rollout_dict(r), "holder": holder, "nodes": nodes}
