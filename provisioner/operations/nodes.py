"""Nodes as they are: observe (read every BMC), plan, drift, compliance, status, history.

Nothing here changes a node; each function takes the context (store, spec, artifacts) and returns
plain data the CLI and the operator API render alike.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from provisioner.context import Context
from provisioner.drivers import open_driver
from provisioner.errors import DriverError
from provisioner.netboot.gate import find_blocked
from provisioner.operations.common import active_blocks, endpoints, known_environment, release_of
from provisioner.plan import Observed, Plan, image_key, make_plan, release_blocks
from provisioner.releases.view import ReleaseView
from provisioner.states import NEEDS_RECOVERY, NodeState
from provisioner.store.repo import now


def observe(ctx: Context, env: str | None = None, refresh: bool = True, workers: int = 32) -> tuple[list[Observed], dict]:
    """Observed state of every node (of `env`); with `refresh`, firmware is read from each BMC now.

    Returns (observed, errors): `errors` maps every node whose BMC could not be read to why. Their
    `Observed` carries the last stored read, so callers must treat them as unknown, not as green.
    """
    ctx.store.sync_nodes(ctx.spec)
    rows = {r.name: r for r in ctx.store.node_readings(env)}
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
                    rows[name] = rows[name]._replace(observed=fw)
    views: dict[str, ReleaseView] = {}

    def installed_image(r) -> str | None:
        if not r.installed_release:
            return None
        if r.installed_release not in views:
            views[r.installed_release] = ReleaseView.of(ctx.store.get_release(r.installed_release))
        return image_key(views[r.installed_release], r.name)

    return [Observed(r.name, r.rack, r.model, r.environment, dict(r.observed), r.installed_release,
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
    rows = {r.name: r for r in ctx.store.node_readings()}
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
    covered: dict[tuple, bool] = {}  # (release, model, component, version) -> blocked: a fleet repeats them

    def is_blocked(rid, blocked, model, component, version) -> bool:
        key = (rid, model, component, version)
        if key not in covered:
            covered[key] = bool(find_blocked(blocked, model, component, version))
        return covered[key]

    for r in ctx.store.node_readings():
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
        fw = r.observed
        out.append({"node": r.name, "environment": r.environment, "rack": r.rack, "model": r.model,
                    "state": r.state, "release": rid, "node_release": r.release_id,
                    "compliant": None if r.name in unread else
                    bool(pins) and all(fw.get(k) == v for k, v in pins.items()) and r.release_id == rid
                    and r.state not in NOT_COMPLIANT,
                    "bmc_error": unread.get(r.name),
                    "components": {k: {"pinned": v, "observed": fw.get(k),
                                       "blocked": is_blocked(rid, blocked, r.model, k, fw.get(k))}
                                   for k, v in pins.items()}})
    return out


def status(ctx: Context, env: str | None = None, refresh: bool = True) -> tuple[list[dict], dict]:
    """Where each node stands (compliance), and the BMCs that could not be read (with `refresh`)."""
    if env is not None:
        known_environment(ctx, env)
    unread = observe(ctx, env)[1] if refresh else {}
    return compliance(ctx, [env] if env else None, unread=unread), unread


def status_version(ctx: Context) -> int:
    """A number that changes whenever `status` from the stored reads may: any node row written
    (each write stamps updated_at), or any audited change (a promotion, a block, a release).
    One cheap read; what lets a server reuse a status until the store changes."""
    from sqlalchemy import func, select

    from provisioner.store.models import AuditRow, NodeRow

    with ctx.store.db.read() as c:
        stamps = tuple(c.execute(select(NodeRow.name, NodeRow.updated_at).order_by(NodeRow.name)))
        head = c.execute(select(func.max(AuditRow.seq))).scalar()
    return hash((stamps, head))


def history(ctx: Context, limit: int = 40) -> dict:
    """Every change in order: the audit log's last entries and the rollouts."""
    from provisioner.rollout.record import RolloutRecord

    rollouts = [{"id": r.id, "environment": r.environment, "release": r.release_id, "kind": r.kind,
                 "status": r.status, "reason": r.reason, "by": r.by,
                 "created_at": r.created_at.isoformat()} for r in RolloutRecord(ctx.store).rollouts()]
    return {"audit": ctx.store.audit_entries(limit), "rollouts": rollouts}
