"""One node's lifecycle as an operator sees and changes it: its detail, maintenance on/off, clear.

Changing a node is authorised as `apply` (operators change nodes; policy/authz.py) and audited as
the acting account, or as the store's root on the server host.
"""

from __future__ import annotations

from sqlalchemy import select

from provisioner.context import Context
from provisioner.drivers import open_driver
from provisioner.errors import DriverError, PolicyViolation, ReleaseError
from provisioner.operations.common import authorise, endpoints
from provisioner.policy.authz import Action
from provisioner.releases.view import ReleaseView
from provisioner.rollout.lease import Leases, bmc_key, node_key
from provisioner.rollout.record import RolloutRecord
from provisioner.states import IllegalTransition
from provisioner.store.models import RolloutNodeRow, RolloutRow
from provisioner.store.repo import aware, now


def node_row(ctx: Context, name: str):
    ctx.store.sync_nodes(ctx.spec)
    row = ctx.store.node(name)
    if row is None:
        known = ", ".join(r.name for r in ctx.store.nodes()[:8])
        raise ReleaseError(f"no node {name!r} in the inventory (known: {known}, ...)")
    return row


def pins(ctx: Context, row) -> dict[str, str]:
    rid = ctx.store.current_release_id(row.environment)
    if rid is None:
        return {}
    return {c.name: c.version for c in ReleaseView.of(ctx.store.get_release(rid)).pins(row.model) or ()}


def detail(ctx: Context, name: str) -> dict:
    """State and why, firmware observed vs pinned, the last events, the last rollout's steps."""
    row = node_row(ctx, name)
    pinned = pins(ctx, row)
    fw = row.observed or {}
    with ctx.store.db.session() as s:
        last = s.execute(select(RolloutNodeRow, RolloutRow).join(RolloutRow, RolloutRow.id == RolloutNodeRow.rollout_id)
                         .where(RolloutNodeRow.node == name).order_by(RolloutRow.id.desc()).limit(1)).first()
    last_rollout = None
    if last is not None:
        rn, r = last
        steps = [{"step": s["step"], "phase": s["phase"], "at": s["at"].isoformat()[:23],
                  "error": (s["details"] or {}).get("error")}
                 for s in RolloutRecord(ctx.store).steps(r.id) if s["node"] == name]
        last_rollout = {"id": r.id, "kind": r.kind, "status": r.status, "node_status": rn.status,
                        "action": rn.action, "error": rn.error, "steps": steps}
    return {"node": row.name, "environment": row.environment, "rack": row.rack, "model": row.model,
            "state": row.state, "why": row.state_reason, "release": row.release_id,
            "installed_release": row.installed_release,
            "observed_at": aware(row.observed_at).isoformat()[:19] if row.observed_at else None,
            "firmware": {c: {"observed": fw.get(c), "pinned": pinned.get(c)} for c in sorted({*fw, *pinned})},
            "events": ctx.store.node_events(name, limit=10), "last_rollout": last_rollout}


def _transition(ctx: Context, name: str, event: str, reason: str) -> dict:
    row = node_row(ctx, name)
    try:
        state = ctx.store.transition_node(name, event, reason)
    except IllegalTransition as e:
        raise PolicyViolation(str(e)) from None
    ctx.store.audit(ctx.actor, f"node.{event}", name, {"from": row.state, "to": str(state), "reason": reason})
    return {"node": name, "from": row.state, "state": str(state), "reason": reason}


def maintenance(ctx: Context, name: str, on: bool, reason: str) -> dict:
    """Take a node out of rollouts (on) or give it back, to ready (off)."""
    authorise(ctx, ctx.actor, Action.APPLY, name)
    switch = "on" if on else "off"
    return _transition(ctx, name, f"maintenance_{switch}", f"maintenance {switch}: {reason}")


def clear(ctx: Context, name: str, reason: str) -> dict:
    """A failed, needs-hands or held node back to ready after a BMC read now, holding the node's and
    the BMC's leases (no rollout acts on it meanwhile); an unreadable BMC refuses the clear."""
    authorise(ctx, ctx.actor, Action.APPLY, name)
    row = node_row(ctx, name)
    ep = endpoints(ctx)[name]
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
    pinned = pins(ctx, row)
    data["firmware"] = {c: {"observed": fw.get(c), "pinned": v} for c, v in pinned.items()}
    data["at_pins"] = all(fw.get(c) == v for c, v in pinned.items())
    data["environment"] = row.environment
    return data
