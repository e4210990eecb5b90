"""The pipeline's operations, in operator terms; the CLI and the demo are thin over these.

observe · plan · apply · gate · approve · promote · block/unblock · rollback · drift · compliance
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from provisioner.context import Context
from provisioner.drivers import BmcEndpoint, open_driver
from provisioner.errors import DriverError, PolicyViolation, ReleaseError
from provisioner.netboot.gate import Blocked, find_blocked, release_blocklist
from provisioner.plan import Observed, Plan, blocked_pins, image_key, make_plan, pins_by_model
from provisioner.policy.gate import GateVerdict, StagingNode, evaluate
from provisioner.rollout.engine import RolloutEngine, RolloutResult
from provisioner.rollout.record import RolloutRecord
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
                     installed_image(r)) for r in rows.values()], errors


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
          only: set[str] | None = None, refresh: bool = True) -> RolloutResult:
    """Roll the environment's release out (or resume the unfinished rollout of it)."""
    rel = release_of(ctx, env)
    refuse_blocked(ctx, rel, "apply")
    broken = ctx.artifacts.check_release(rel.document)  # before any BMC is read or power-cycled
    if broken:
        raise ReleaseError(f"cannot apply release {rel.short}: {len(broken)} of its artifacts are not intact in "
                           f"the store ({broken[0]}); run `provisioner release build` from its spec again")
    record = RolloutRecord(ctx.store)
    pol = rel.document["policy"]["rollout"]
    open_ = record.open_rollout(env, rel.id)
    if open_ is not None and open_.release_id == rel.id:
        rid = open_.id
        if progress:
            progress({"event": "resume", "rollout": rid})
    else:
        p, errors = plan(ctx, env, refresh)
        if only is not None:
            p = Plan(p.release_id, p.environment, tuple(n for n in p.nodes if n.node in only))
        for n in p.nodes:  # read just now at this release's pins and image: at the release, untouched
            if n.action == "nothing" and n.node not in errors:
                ctx.store.update_node(n.node, release_id=rel.id)
        rid = record.create(p, kind, ctx.settings.actor, reason or f"{kind} {rel.short} to {env}",
                            pol["canary"], pol["wave_size"])
        if progress:
            progress({"event": "created", "rollout": rid, "counts": p.counts(), "unreachable": errors})
    engine = RolloutEngine(ctx.store, ctx.artifacts, endpoints(ctx), pol, rel.id, rel.document,
                           actor=ctx.settings.actor, progress=progress)
    return engine.run(rid)


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


def block(ctx: Context, component: str, version: str, reason: str, *, model: str | None = None,
          incident: str | None = None) -> dict:
    """Block everywhere at once: store it, and mark every node seen running it for re-provisioning."""
    created = ctx.store.block(component, version, reason, ctx.settings.actor, incident=incident, model=model)
    marked = []
    for n in ctx.store.nodes():
        if (n.observed or {}).get(component) == version and model in (None, n.model):
            ctx.store.update_node(n.name, state="held", state_reason=f"runs blocked {component} {version}: "
                                  f"{reason}; re-provision pending")
            marked.append(n.name)
    halting = [r.id for r in RolloutRecord(ctx.store).rollouts() if r.status == "running"
               and blocked_pins(ctx.store.get_release(r.release_id).document, active_blocks(ctx))]
    return {"created": created, "component": component, "version": version, "marked": marked,
            "rollouts_halting": halting}


def rollback(ctx: Context, env: str, to: str | None = None, progress: Callable | None = None) -> RolloutResult:
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
    ctx.store.point_environment(env, target.id, ctx.settings.actor, f"rollback from {(current or '-')[:12]}",
                                action="env.rollback")
    return apply(ctx, env, kind="rollback", reason=f"rollback to {target.short}", progress=progress)


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
                    "compliant": bool(pins) and all(fw.get(k) == v for k, v in pins.items()) and r.release_id == rid,
                    "components": {k: {"pinned": v, "observed": fw.get(k),
                                       "blocked": bool(find_blocked(blocked, r.model, k, fw.get(k)))}
                                   for k, v in pins.items()}})
    return out
