"""The pipeline's operations, in operator terms; the CLI and the demo are thin over these.

observe · plan · apply · gate · approve · promote · block/unblock · rollback · drift · compliance
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from provisioner.context import Context
from provisioner.drivers import BmcEndpoint, open_driver
from provisioner.errors import DriverError, PolicyViolation, ReleaseError, RolloutBusy, RolloutHalted
from provisioner.netboot.gate import Blocked, find_blocked, release_blocklist
from provisioner.plan import Observed, Plan, blocked_pins, image_key, make_plan, pins_by_model
from provisioner.policy.gate import GateVerdict, StagingNode, evaluate
from provisioner.rollout.engine import RolloutEngine, RolloutResult
from provisioner.rollout.lease import Leases, environment_key
from provisioner.rollout.record import RolloutRecord
from provisioner.states import NEEDS_RECOVERY, IllegalTransition, NodeState
from provisioner.store.repo import aware, now


def endpoints(ctx: Context) -> dict[str, BmcEndpoint]:
    out = {}
    for _, n in ctx.spec.nodes():
        user, password = ctx.secret(n.bmc.credentials)
        out[n.name] = BmcEndpoint(n.bmc.address, n.bmc.port, user, password, n.bmc.driver)
    return out


def active_blocks(ctx: Context) -> list[Blocked]:
    return [Blocked(b["component"], b["version"], b["reason"], b["model"]) for b in ctx.store.active_blocks()]


def release_of(ctx: Context, env: str):
    rid = ctx.store.current_release_id(env)
    if rid is None:
        raise ReleaseError(f"environment {env} points at no release yet; `provisioner promote RELEASE --to {env}`")
    return ctx.store.get_release(rid)


def observe(ctx: Context, env: str | None = None, refresh: bool = True, workers: int = 32) -> tuple[list[Observed], dict]:
    """Observed state of every node (of `env`); with `refresh`, firmware is read from each BMC now."""
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
    docs: dict[str, dict] = {}

    def installed_image(r) -> str | None:
        if not r.installed_release:
            return None
        if r.installed_release not in docs:
            docs[r.installed_release] = ctx.store.get_release(r.installed_release).document
        return image_key(docs[r.installed_release], r.name)

    return [Observed(r.name, r.rack, r.model, r.environment, dict(r.observed or {}), r.installed_release,
                     installed_image(r), r.state, r.state_reason) for r in rows.values()], errors


def plan(ctx: Context, env: str, refresh: bool = True) -> tuple[Plan, dict]:
    rel = release_of(ctx, env)
    observed, errors = observe(ctx, env, refresh)
    return make_plan(rel.id, rel.document, env, observed, active_blocks(ctx)), errors


def refuse_blocked(ctx: Context, release, verb: str) -> None:
    bad = blocked_pins(release.document, active_blocks(ctx))
    if bad:
        m, c, v, b = bad[0]
        raise PolicyViolation(f"cannot {verb} release {release.short}: it pins {m} {c} {v}, blocked ({b.reason}); "
                              f"build a release that pins another {c} version, or `provisioner unblock {c} {v}`")


def apply(ctx: Context, env: str, *, kind: str = "apply", reason: str = "", progress: Callable | None = None,
          only: set[str] | None = None, refresh: bool = True, leases: Leases | None = None,
          point: tuple[str, str] | None = None, on_engine: Callable | None = None) -> RolloutResult:
    """Roll the environment's release out (or resume the unfinished rollout of it).

    One process at a time: the environment's lease is taken in the transaction that creates (or
    resumes) the rollout; RolloutBusy names the holder. A halted rollout of the same release is
    sticky: RolloutHalted until `rollout resume`/`rollout abort`, a rollback or a new release.
    `point` (a rollback's reason and target) re-points the environment in that same transaction.
    """
    rel = ctx.store.get_release(point[1]) if point else release_of(ctx, env)
    refuse_blocked(ctx, rel, "apply")
    leases = leases or Leases(ctx.store)
    busy = leases.peek(environment_key(env))  # fail fast, before reading every BMC
    if busy:
        raise RolloutBusy(f"environment {env} is busy: {busy['purpose']}, held by {busy['holder']} since "
                          f"{busy['since'][:19].replace('T', ' ')} UTC; `provisioner rollout watch` follows it, "
                          f"`apply --wait` waits for it", holder=busy["holder"], since=busy["since"])
    record = RolloutRecord(ctx.store, leases, env)
    pol = rel.document["policy"]["rollout"]
    open_ = record.open_rollout(env)
    leases.start_heartbeat()
    try:
        if open_ is not None and open_.release_id == rel.id and point is None and open_.status != "halted":
            rid = record.resume(open_.id, ctx.settings.actor).id
            if progress:
                progress({"event": "resume", "rollout": rid, "kind": open_.kind})
        else:
            if open_ is not None and open_.status == "halted" and open_.release_id == rel.id and point is None:
                raise RolloutHalted(
                    f"{env} is halted by rollout {open_.id} ({open_.reason}); nothing is flashed there until "
                    f"`provisioner rollout resume {open_.id} --reason ...`, `provisioner rollout abort {open_.id} "
                    f"--reason ...`, a rollback or a new release")
            p, errors = _plan_for(ctx, env, rel, refresh)
            if only is not None:
                p = Plan(p.release_id, p.environment, tuple(n for n in p.nodes if n.node in only))
            for n in p.nodes:  # read just now at this release's pins and image: at the release, untouched
                if n.action == "nothing" and n.node not in errors:
                    ctx.store.update_node(n.node, release_id=rel.id)
            rid = record.create(p, kind, ctx.settings.actor, reason or f"{kind} {rel.short} to {env}",
                                pol["canary"], pol["wave_size"], point=point)
            if progress:
                progress({"event": "created", "rollout": rid, "counts": p.counts(), "unreachable": errors,
                          "kind": kind})
        engine = RolloutEngine(ctx.store, ctx.artifacts, endpoints(ctx), pol, rel.id, rel.document,
                               actor=ctx.settings.actor, progress=progress, leases=leases, environment=env)
        if on_engine:
            on_engine(engine, rid)
        return engine.run(rid)
    finally:
        leases.stop()
        if not leases.lost:
            leases.release_all()


def _plan_for(ctx: Context, env: str, rel, refresh: bool) -> tuple[Plan, dict]:
    if ctx.store.current_release_id(env) == rel.id:
        return plan(ctx, env, refresh)
    observed, errors = observe(ctx, env, refresh)  # a rollback plans against its target release
    return make_plan(rel.id, rel.document, env, observed, active_blocks(ctx)), errors


def wait_for_environment(ctx: Context, env: str, say: Callable[[str], None], poll: float = 1.0) -> None:
    """`apply --wait`: return once no live process holds the environment's lease."""
    leases, told = Leases(ctx.store), False
    while (busy := leases.peek(environment_key(env))) is not None:
        if not told:
            say(f"waiting for {env}: {busy['purpose']}, held by {busy['holder']} since {busy['since'][:19]}")
            told = True
        time.sleep(poll)


def gate(ctx: Context, release_ref: str) -> GateVerdict:
    rel = ctx.store.get_release(release_ref)
    meta = ctx.store.release_meta(rel.id)
    pol = rel.document["policy"]["staging_gate"]
    env = pol["environment"]
    nodes = [StagingNode(r.name, r.release_id, r.state, aware(r.healthy_since)) for r in ctx.store.nodes(env)]
    outcomes = RolloutRecord(ctx.store).outcomes(rel.id, env)
    approvers = [a["approver"] for a in ctx.store.approvals(rel.id)]
    return evaluate(rel.id, meta["author"], pol, nodes, outcomes, approvers, now())


def approve(ctx: Context, release_ref: str, who: str, comment: str = "") -> bool:
    rel = ctx.store.get_release(release_ref)
    author = ctx.store.release_meta(rel.id)["author"]
    if who == author:
        raise PolicyViolation(f"{who} built release {rel.short} and cannot approve it; ask someone else")
    return ctx.store.approve(rel.id, who, comment)


def promote(ctx: Context, release_ref: str, to: str, force_gate: bool = False) -> str | None:
    rel = ctx.store.get_release(release_ref)
    refuse_blocked(ctx, rel, "promote")
    staging = rel.document["policy"]["staging_gate"]["environment"]
    if to != staging and not force_gate:
        verdict = gate(ctx, rel.id)
        if not verdict.ok:
            raise PolicyViolation(f"release {rel.short} has not passed the staging gate: " + "; ".join(verdict.missing))
    return ctx.store.point_environment(to, rel.id, ctx.settings.actor, f"promote {rel.short}", action="env.promote")


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
        engine = RolloutEngine(ctx.store, ctx.artifacts, endpoints(ctx), pol, rel.id, rel.document,
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
    halting = [r.id for r in RolloutRecord(ctx.store).rollouts() if r.status == "running"
               and blocked_pins(ctx.store.get_release(r.release_id).document, active_blocks(ctx))]
    return {"created": created, "component": component, "version": version, "marked": marked,
            "rollouts_halting": halting}


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
    current = ctx.store.current_release_id(env)
    if to:
        target = ctx.store.get_release(to)
    else:
        hist = [h for h in ctx.store.environment_history(env) if h["release_id"] != current]
        if not hist:
            raise ReleaseError(f"{env} has no previous release to roll back to")
        target = ctx.store.get_release(hist[-1]["release_id"])
    bad = blocked_pins(target.document, active_blocks(ctx))
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


def drift(ctx: Context) -> tuple[list[DriftItem], dict]:
    """Nodes whose BMC (read now) reports firmware other than their environment's release pins."""
    observed, errors = observe(ctx, None, refresh=True)
    items = []
    rows = {r.name: r for r in ctx.store.nodes()}
    for o in observed:
        rid = ctx.store.current_release_id(o.environment)
        if rid is None or o.name in errors or rows[o.name].release_id is None:
            continue  # never provisioned: that is a plan, not drift
        pins = pins_by_model(ctx.store.get_release(rid).document).get(o.model, [])
        for c in pins:
            if o.firmware.get(c["name"]) != c["version"]:
                items.append(DriftItem(o.name, o.environment, c["name"], o.firmware.get(c["name"]), c["version"]))
    return items, errors


def compliance(ctx: Context, envs: list[str] | None = None) -> list[dict]:
    """Every node against its environment's release: pinned vs last observed, per component."""
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
            doc = ctx.store.get_release(rid).document
            per_release[rid] = ({m: {c["name"]: c["version"] for c in cs} for m, cs in pins_by_model(doc).items()},
                                release_blocklist(doc) + runtime_blocks)
        pins, blocked = per_release[rid] if rid else ({}, [])
        pins = pins.get(r.model, {})
        fw = r.observed or {}
        out.append({"node": r.name, "environment": r.environment, "rack": r.rack, "model": r.model,
                    "state": r.state, "release": rid, "node_release": r.release_id,
                    "compliant": bool(pins) and all(fw.get(k) == v for k, v in pins.items()) and r.release_id == rid
                    and r.state not in NOT_COMPLIANT,
                    "components": {k: {"pinned": v, "observed": fw.get(k),
                                       "blocked": bool(find_blocked(blocked, r.model, k, fw.get(k)))}
                                   for k, v in pins.items()}})
    return out
