"""The pipeline's operations, in operator terms; the CLI and the demo are thin over these.

observe · plan · apply · gate · approve · promote · block/unblock · rollback · drift · compliance
"""

from __future__ import annotations

import difflib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from provisioner.auth.identity import normalise_username
from provisioner.context import Context
from provisioner.drivers import BmcEndpoint, open_driver
from provisioner.errors import (
    DriverError,
    Forbidden,
    InputError,
    PlanOutdated,
    PolicyViolation,
    ReleaseError,
    RolloutBusy,
    RolloutHalted,
    UnknownEnvironment,
)
from provisioner.netboot.gate import Blocked, find_blocked, release_blocklist
from provisioner.plan import (
    Observed,
    Plan,
    blocked_pins,
    image_key,
    make_plan,
    pinned_blocked,
    release_blocks,
    stale_reasons,
)
from provisioner.policy.authz import Action, Decision, Facts, Who, decide, same_person
from provisioner.policy.gate import GateVerdict, StagingNode, evaluate, rules_in_force, staging_environment
from provisioner.releases.view import ReleaseView
from provisioner.rollout import handoff
from provisioner.rollout.engine import RolloutResult
from provisioner.rollout.lease import Leases, environment_key
from provisioner.rollout.record import RolloutRecord
from provisioner.spec.models import StagingGate
from provisioner.states import NEEDS_RECOVERY, IllegalTransition, NodeState
from provisioner.store.repo import aware, now


def endpoints(ctx: Context) -> dict[str, BmcEndpoint]:
    out = {}
    for _, n in ctx.spec.nodes():
        user, password = ctx.secret(n.bmc.credentials)
        out[n.name] = BmcEndpoint(n.bmc.address, n.bmc.port, user, password, n.bmc.driver,
                                  options=driver_options(ctx, n))
    return out


def driver_options(ctx: Context, node) -> tuple:
    """What the spec says to a node's driver beyond address and credentials (Redfish: TLS trust,
    where the BMC fetches images, how it names firmware)."""
    if node.bmc.driver != "redfish":
        return ()
    mapping = ctx.spec.manifests[node.model].redfish
    options = {"ca_bundle": ctx.ca_bundle(node.bmc.credentials), "image_server": node.bmc.image_server,
               "software_ids": tuple(sorted(mapping.software_ids.items())) if mapping else ()}
    return tuple(sorted((k, v) for k, v in options.items() if v))


def active_blocks(ctx: Context) -> list[Blocked]:
    return [Blocked(b["component"], b["version"], b["reason"], b["model"]) for b in ctx.store.active_blocks()]


def known_environment(ctx: Context, env: str) -> str:
    """`env` if policy.yaml declares it; otherwise UnknownEnvironment naming the known ones.

    A typo must never create an environment (`promote --to prod` would point a new, empty one).
    """
    known = list(ctx.spec.policy.environments)
    if env in known:
        return env
    guess = next((k for k in known if k == env.lower() or (len(env) >= 3 and k.startswith(env.lower()))), None)
    guess = guess or next(iter(difflib.get_close_matches(env.lower(), known, n=1, cutoff=0.6)), None)
    raise UnknownEnvironment(f"unknown environment {env!r}" + (f" (did you mean {guess!r}?)" if guess else "")
                             + f"; known: {', '.join(known)}, as declared under environments: in policy.yaml")


def release_of(ctx: Context, env: str):
    rid = ctx.store.current_release_id(env)
    if rid is None:
        raise ReleaseError(f"environment {env} points at no release yet; `provisioner promote RELEASE --to {env}`")
    return ctx.store.get_release(rid)


def observe(ctx: Context, env: str | None = None, refresh: bool = True, workers: int = 32) -> tuple[list[Observed], dict]:
    """Observed state of every node (of `env`); with `refresh`, firmware is read from each BMC now.

    Returns (observed, errors): `errors` maps every node whose BMC could not be read to why. Their
    `Observed` carries the last stored read, so callers must treat them as unknown, not as green.
    """
    ctx.store.sync_nodes(ctx.spec)
    rows = {r.name: r for r in ctx.store.nodes(env)}
    errors: dict[str, str] = {}
    if refresh and rows:
        eps = endpoints(ctx)

        def read(name):
            try:
                with open_driver(eps[name]) as d:
                    fw = d.firmware_inventory()
                ctx.store.update_node(name, observed=fw, observed_at=now())
                return name, fw
            except DriverError as e:
                errors[name] = f"{e.__class__.__name__}: {e}"
                return name, None

        with ThreadPoolExecutor(min(workers, len(rows))) as pool:
            for name, fw in pool.map(read, sorted(rows)):
                if fw is not None:
                    rows[name].observed = fw
    views: dict[str, ReleaseView] = {}

    def installed_image(r) -> str | None:
        if not r.installed_release:
            return None
        if r.installed_release not in views:
            views[r.installed_release] = ReleaseView.of(ctx.store.get_release(r.installed_release))
        return image_key(views[r.installed_release], r.name)

    return [Observed(r.name, r.rack, r.model, r.environment, dict(r.observed or {}), r.installed_release,
                     installed_image(r), r.state, r.state_reason) for r in rows.values()], errors


def plan(ctx: Context, env: str, refresh: bool = True) -> tuple[Plan, dict]:
    p, errors, _ = plan_observed(ctx, env, refresh)
    return p, errors


def plan_observed(ctx: Context, env: str, refresh: bool = True) -> tuple[Plan, dict, dict[str, dict]]:
    """The plan, the BMCs that could not be read, and the firmware each node was planned from."""
    known_environment(ctx, env)
    rel = release_of(ctx, env)
    observed, errors = observe(ctx, env, refresh)
    return (make_plan(ReleaseView.of(rel), env, observed, active_blocks(ctx), unread=errors), errors,
            {o.name: o.firmware for o in observed})


def refuse_blocked(ctx: Context, release, verb: str) -> None:
    bad = pinned_blocked(ReleaseView.of(release), active_blocks(ctx))
    if bad:
        m, c, v, b = bad[0]
        raise PolicyViolation(f"cannot {verb} release {release.short}: it pins {m} {c} {v}, blocked ({b.reason}); "
                              f"build a release that pins another {c} version, or `provisioner unblock {c} {v}`")


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
        engine = handoff.engine_class(ctx)(ctx.store, ctx.artifacts, endpoints(ctx), pol, rel.id, rel.document,
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


def gate(ctx: Context, release_ref: str, target: str = "production") -> GateVerdict:
    """The staging evidence for a release against the rules in force (policy/gate.rules_in_force):
    the strictest of its own, those of the release active in `target`, and the site's floor."""
    rel = ctx.store.get_release(release_ref)
    meta = ctx.store.release_meta(rel.id)
    own = rel.document["policy"]["staging_gate"]
    current = ctx.store.current_release_id(target)
    in_force = ctx.store.get_release(current).document["policy"]["staging_gate"] if current else None
    rules, source = rules_in_force(own, in_force, ctx.site.floor())
    env = rules["environment"]
    nodes = [StagingNode(r.name, r.release_id, r.state, aware(r.healthy_since)) for r in ctx.store.nodes(env)]
    outcomes = RolloutRecord(ctx.store).outcomes(rel.id, env)
    author = _author(ctx, rel.id, meta)
    approvers = [a["approver"] for a in ctx.store.approvals(rel.id)
                 if not same_person(Who(_norm(a["approver"]), None, a["account_id"]), author)]
    verdict = evaluate(rel.id, author.username, StagingGate(**rules), nodes, outcomes, approvers, now())
    verdict.facts.update(rules_source=source, release_policy=own)
    return verdict


def _norm(name: str) -> str:
    try:
        return normalise_username(name)
    except InputError:
        return name


def _who(actor) -> Who:
    """The matrix's view of an actor: an authenticated account, or the store's root (unverified name)."""
    if getattr(actor, "authenticated", False):
        return Who(actor.account.username, actor.account.role, actor.account.id)
    return Who(_norm(getattr(actor, "name", str(actor))), None, None)


def _author(ctx: Context, release_id: str, meta: dict) -> Who:
    return Who(_norm(meta["author"]), None, ctx.store.release_author_account(release_id))


def authorise(ctx: Context, actor, action: Action, subject: str, facts: Facts | None = None,
              refusal: Callable[[Decision], str] | None = None) -> None:
    """Apply the matrix; a refusal is audited, then raised (Forbidden for a role, else PolicyViolation).
    `refusal` words a refusal in the terms of the case at hand."""
    who = _who(actor)
    d = decide(action, who, facts)
    if d.allowed:
        return
    reason = refusal(d) if refusal else d.reason
    ctx.store.audit(actor, "authz.refused", subject, {"action": str(action), "reason": reason})
    raise (Forbidden if d.by_role else PolicyViolation)(reason)


def approve(ctx: Context, release_ref: str, who=None, comment: str = "", *, withdraw: bool = False) -> bool:
    """Record (or, with `withdraw`, take back) one approval by `who`, an Actor bound to an account.

    Refused, and the refusal audited: without an authenticated account, for a role that may not
    approve, for the release's author (normalised names and account ids), for a release that
    failed on staging or pins a blocked version.
    """
    who = who if who is not None else ctx.actor
    rel = ctx.store.get_release(release_ref)
    if withdraw:  # taking one's own approval back needs the account, not the approver role
        if not getattr(who, "authenticated", False):
            authorise(ctx, who, Action.APPROVE, rel.id)
        return ctx.store.withdraw_approval(rel.id, who, comment)
    author = _author(ctx, rel.id, ctx.store.release_meta(rel.id))
    authorise(ctx, who, Action.APPROVE, rel.id, Facts(other=author),
              refusal=lambda d: d.reason.replace("this release", f"release {rel.short}"))

    def refuse(reason: str):
        ctx.store.audit(who, "release.approve.refused", rel.id, {"reason": reason})
        raise PolicyViolation(reason)

    staging = staging_environment(ctx.site.floor())
    outcomes = RolloutRecord(ctx.store).outcomes(rel.id, staging)
    halted = [r.id for r in RolloutRecord(ctx.store).rollouts(staging, limit=1000)
              if r.release_id == rel.id and r.status == "halted"]
    if outcomes.get("failed", 0) or halted:
        refuse(f"release {rel.short} failed on {staging} ({outcomes.get('failed', 0)} node(s) failed"
               + (f", rollout {halted[-1]} halted" if halted else "") + "); build a fixed release instead")
    bad = blocked_pins(rel.document, active_blocks(ctx))
    if bad:
        m, c, v, b = bad[0]
        refuse(f"release {rel.short} pins {m} {c} {v}, blocked ({b.reason}); it cannot be approved")
    return ctx.store.approve(rel.id, who, comment)


def promote(ctx: Context, release_ref: str, to: str, force_gate: bool = False) -> str | None:
    known_environment(ctx, to)
    rel = ctx.store.get_release(release_ref)
    refuse_blocked(ctx, rel, "promote")
    if to == staging_environment(ctx.site.floor()):
        authorise(ctx, ctx.actor, Action.PROMOTE_STAGING, rel.id)
    else:
        verdict = None if force_gate else gate(ctx, rel.id, target=to)
        missing = "; ".join(verdict.missing) if verdict else ""
        authorise(ctx, ctx.actor, Action.PROMOTE_PRODUCTION, rel.id, Facts(gate_passes=verdict is None or verdict.ok),
                  refusal=lambda d: d.reason if d.by_role or not missing
                  else f"release {rel.short} has not passed the staging gate: {missing}")
    return ctx.store.point_environment(to, rel.id, ctx.actor, f"promote {rel.short}", action="env.promote")


def resume(ctx: Context, rid: int, reason: str, progress: Callable | None = None,
           on_engine: Callable | None = None) -> RolloutResult:
    """`rollout resume ID --reason`: an operator lets a halted rollout go on (failed nodes are retried)."""
    record = RolloutRecord(ctx.store)
    r = record.rollout(rid)
    if r is None:
        raise ReleaseError(f"no rollout {rid}; `provisioner rollout list` shows them")
    if r.status not in ("halted", "interrupted"):
        raise PolicyViolation(f"rollout {rid} is {r.status}: only a halted or interrupted rollout can be resumed")
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
        pol = rel.document["policy"]["rollout"]
        engine = handoff.engine_class(ctx)(ctx.store, ctx.artifacts, endpoints(ctx), pol, rel.id, rel.document,
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
    record = RolloutRecord(ctx.store)
    r = record.rollout(rid)
    if r is None:
        raise ReleaseError(f"no rollout {rid}; `provisioner rollout list` shows them")
    if r.status not in ("halted", "interrupted"):
        raise PolicyViolation(f"rollout {rid} is {r.status}: only a halted or interrupted rollout can be aborted")
    leases = Leases(ctx.store)
    try:
        return RolloutRecord(ctx.store, leases, r.environment).abort(rid, ctx.settings.actor, reason)
    finally:
        leases.release_all()


def block(ctx: Context, component: str, version: str, reason: str, *, model: str | None = None,
          incident: str | None = None) -> dict:
    """Block everywhere at once: store it, and mark every node seen running it for re-provisioning."""
    component, version, reason = _checked_block(ctx, component, version, reason, model)
    created = ctx.store.block(component, version, reason, ctx.settings.actor, incident=incident, model=model)
    marked = []
    for n in ctx.store.nodes():
        if (n.observed or {}).get(component) == version and model in (None, n.model):
            try:
                ctx.store.transition_node(n.name, "hold", f"runs blocked {component} {version}: {reason}; "
                                          "re-provision pending")
            except IllegalTransition:  # mid-rollout, in maintenance or needs-hands: the gate still refuses it
                continue
            marked.append(n.name)
    blocks = active_blocks(ctx)
    halting = [r.id for r in RolloutRecord(ctx.store).rollouts() if r.status == "running"
               and pinned_blocked(ReleaseView.of(ctx.store.get_release(r.release_id)), blocks)]
    return {"created": created, "component": component, "version": version, "marked": marked,
            "rollouts_halting": halting}


def _checked_block(ctx: Context, component: str, version: str, reason: str, model: str | None):
    """Refuse a block that would block nothing: empty fields, a component no manifest has, an unknown model.

    Names come from every stored release and from the spec when it loads: a block during an
    incident must work while the spec directory is half-edited.
    """
    from provisioner.errors import InputError, SpecError
    from provisioner.spec.suggest import did_you_mean

    fields = {"component": component.strip(), "version": version.strip(), "reason": reason.strip()}
    for name, value in fields.items():
        if not value:
            raise InputError(f"the {name} of a block cannot be empty; expected e.g. "
                             "`provisioner block bios 1.20.0 --reason \"boot loop, INC-4411\"`")
    components, models = set(), set()
    for r in ctx.store.list_releases():
        doc = ctx.store.get_release(r["id"]).document
        components |= {c["name"] for m in doc["manifests"].values() for c in m["components"]}
        models |= set(doc["manifests"])
    try:
        components |= {c.name for m in ctx.spec.manifests.values() for c in m.components}
        models |= set(ctx.spec.manifests)
    except SpecError:
        if not components:
            raise
    if fields["component"] not in components:
        raise InputError(f"no manifest has a component {fields['component']!r}"
                         f"{did_you_mean(fields['component'], components)}")
    if model is not None and model not in models:
        raise InputError(f"no hardware model {model!r} in the inventory{did_you_mean(model, models)}")
    return fields["component"], fields["version"], fields["reason"]


def unblock(ctx: Context, component: str, version: str, reason: str, model: str | None = None) -> dict:
    """Lift a block; nodes held only for running it (nothing else they run is blocked) are released."""
    lifted = ctx.store.unblock(component, version, ctx.settings.actor, reason, model=model)
    blocks = active_blocks(ctx)
    released = []
    for n in ctx.store.nodes():
        if n.state != NodeState.HELD:
            continue
        rid = ctx.store.current_release_id(n.environment)
        blocked = blocks + (release_blocklist(ctx.store.get_release(rid).document) if rid else [])
        if any(find_blocked(blocked, n.model, c, v) for c, v in (n.observed or {}).items()):
            continue
        if rid and blocked_pins(ctx.store.get_release(rid).document, blocks):
            continue  # its release still pins a blocked version: the hold stands
        try:
            ctx.store.transition_node(n.name, "release", f"nothing it runs is blocked (unblocked {component} "
                                      f"{version}: {reason})")
        except IllegalTransition:
            continue
        released.append(n.name)
    return {"component": component, "version": version, "lifted": lifted, "released": released}


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


# A node in one of these states is not "compliant", whatever its BMC reports.
NOT_COMPLIANT = frozenset({*NEEDS_RECOVERY, NodeState.HELD})


@dataclass
class DriftItem:
    node: str
    environment: str
    component: str
    observed: str | None
    pinned: str

    def as_dict(self) -> dict:
        return self.__dict__.copy()


def drift(ctx: Context, env: str | None = None) -> tuple[list[DriftItem], dict]:
    """Nodes (of `env`) whose BMC, read now, reports firmware other than their environment's release
    pins; and the nodes whose BMC could not be read (whether they drifted is unknown)."""
    if env is not None:
        known_environment(ctx, env)
    observed, errors = observe(ctx, env, refresh=True)
    items = []
    rows = {r.name: r for r in ctx.store.nodes()}
    views: dict[str, ReleaseView | None] = {}  # environment -> its release
    for o in observed:
        if o.environment not in views:
            rid = ctx.store.current_release_id(o.environment)
            views[o.environment] = ReleaseView.of(ctx.store.get_release(rid)) if rid else None
        view = views[o.environment]
        if view is None or o.name in errors or rows[o.name].release_id is None:
            continue  # never provisioned: that is a plan, not drift
        for c in view.pins(o.model) or ():
            if o.firmware.get(c.name) != c.version:
                items.append(DriftItem(o.name, o.environment, c.name, o.firmware.get(c.name), c.version))
    return items, errors


def compliance(ctx: Context, envs: list[str] | None = None, unread: dict[str, str] | None = None) -> list[dict]:
    """Every node against its environment's release: pinned vs last observed, per component.

    A node in `unread` (its BMC could not be read just now) is neither compliant nor not: `None`.
    """
    for env in envs or ():
        known_environment(ctx, env)
    unread = unread or {}
    out = []
    runtime_blocks = active_blocks(ctx)
    per_release: dict[str, tuple[dict, list]] = {}  # release -> (pins by model, deny-list)
    env_release: dict[str, str | None] = {}
    for r in ctx.store.nodes():
        if envs and r.environment not in envs:
            continue
        if r.environment not in env_release:
            env_release[r.environment] = ctx.store.current_release_id(r.environment)
        rid = env_release[r.environment]
        if rid and rid not in per_release:
            view = ReleaseView.of(ctx.store.get_release(rid))
            per_release[rid] = ({m: {c.name: c.version for c in view.pins(m)} for m in view.manifests},
                                release_blocks(view) + runtime_blocks)
        pins, blocked = per_release[rid] if rid else ({}, [])
        pins = pins.get(r.model, {})
        fw = r.observed or {}
        out.append({"node": r.name, "environment": r.environment, "rack": r.rack, "model": r.model,
                    "state": r.state, "release": rid, "node_release": r.release_id,
                    "compliant": None if r.name in unread else
                    bool(pins) and all(fw.get(k) == v for k, v in pins.items()) and r.release_id == rid
                    and r.state not in NOT_COMPLIANT,
                    "bmc_error": unread.get(r.name),
                    "components": {k: {"pinned": v, "observed": fw.get(k),
                                       "blocked": bool(find_blocked(blocked, r.model, k, fw.get(k)))}
                                   for k, v in pins.items()}})
    return out
