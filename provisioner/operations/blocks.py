"""Blocked firmware versions: block (one person, at once), and lifting a block.

Blocking is one person's act (on-call must act fast). Lifting one through the operator API is
two-person: an operator requests it, another approver confirms it (`unblock_request`,
`unblock_confirm`, both in the audit chain). `unblock` lifts at once: it is what direct store
access (the installation's root on the server host) does, and what a confirmation runs.
"""

from __future__ import annotations

from provisioner.context import Context
from provisioner.errors import InputError, PolicyViolation
from provisioner.netboot.gate import find_blocked, release_blocklist
from provisioner.operations.common import active_blocks, authorise, norm_name
from provisioner.operations.results import BlockResult, UnblockRequest, UnblockResult
from provisioner.plan import pinned_blocked
from provisioner.policy.authz import Action, Facts, Who
from provisioner.releases.view import ReleaseView
from provisioner.rollout.record import RolloutRecord
from provisioner.states import IllegalTransition, NodeState


def block(ctx: Context, component: str, version: str, reason: str, *, model: str | None = None,
          incident: str | None = None) -> BlockResult:
    """Block everywhere at once: store it, and mark every node seen running it for re-provisioning."""
    authorise(ctx, ctx.actor, Action.BLOCK, f"{component} {version}")
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
    return BlockResult(created, component, version, marked, halting)


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


def unblock(ctx: Context, component: str, version: str, reason: str, model: str | None = None,
            by=None) -> UnblockResult:
    """Lift a block; nodes held only for running it (nothing else they run is blocked) are released."""
    lifted = ctx.store.unblock(component, version, by if by is not None else ctx.settings.actor, reason, model=model)
    blocks = active_blocks(ctx)
    released = []
    for n in ctx.store.nodes():
        if n.state != NodeState.HELD:
            continue
        rid = ctx.store.current_release_id(n.environment)
        blocked = blocks + (release_blocklist(ReleaseView.of(ctx.store.get_release(rid))) if rid else [])
        if any(find_blocked(blocked, n.model, c, v) for c, v in (n.observed or {}).items()):
            continue
        if rid and pinned_blocked(ReleaseView.of(ctx.store.get_release(rid)), blocks):
            continue  # its release still pins a blocked version: the hold stands
        try:
            ctx.store.transition_node(n.name, "release", f"nothing it runs is blocked (unblocked {component} "
                                      f"{version}: {reason})")
        except IllegalTransition:
            continue
        released.append(n.name)
    return UnblockResult(component, version, lifted, released)



REQUEST, CONFIRM, WITHDRAW = "firmware.unblock.request", "firmware.unblock", "firmware.unblock.request.withdraw"


def pending_unblocks(ctx: Context) -> list[UnblockRequest]:
    """Requests to lift a block not yet confirmed nor withdrawn, read from the audit chain (a row
    written behind the store's back is not a request)."""
    pending: dict[tuple, UnblockRequest] = {}
    for e in ctx.store.audit_entries():
        if e["action"] not in (REQUEST, CONFIRM, WITHDRAW):
            continue
        model = (e["details"] or {}).get("model")
        key = (e["subject"], model)
        if e["action"] == REQUEST:
            component, _, version = e["subject"].partition(" ")
            pending.setdefault(key, UnblockRequest(component, version, model, e["details"].get("reason", ""),
                                                   e["details"].get("requested_by", e["actor"]), e["seq"],
                                                   e["account_id"]))
        else:  # confirmed (lifted), or taken back: no longer pending
            pending.pop(key, None)
            if model is not None:  # lifting every model's block ends that model's request too
                continue
            for k in [k for k in pending if k[0] == e["subject"]]:
                pending.pop(k)
    return list(pending.values())


def _request_for(ctx: Context, component: str, version: str, model: str | None) -> UnblockRequest | None:
    return next((r for r in pending_unblocks(ctx) if (r.component, r.version, r.model) == (component, version, model)),
                None)


def unblock_request(ctx: Context, component: str, version: str, reason: str, model: str | None = None,
                    who=None) -> UnblockRequest:
    """Ask for a block to be lifted (operator and up); another approver must confirm it."""
    who = who if who is not None else ctx.actor
    subject = f"{component} {version}"
    authorise(ctx, who, Action.UNBLOCK_REQUEST, subject)
    if not reason.strip():
        raise InputError("the reason of an unblock request cannot be empty")
    if not any(b["component"] == component and b["version"] == version and model in (None, b["model"])
               for b in ctx.store.active_blocks()):
        raise InputError(f"{component} {version} is not blocked" + (f" on {model}" if model else ""))
    existing = _request_for(ctx, component, version, model)
    if existing is not None:
        existing.created = False
        return existing
    ctx.store.audit(who, REQUEST, subject, {"model": model, "reason": reason, "requested_by": who.name})
    return _request_for(ctx, component, version, model)


def unblock_confirm(ctx: Context, component: str, version: str, reason: str = "", model: str | None = None,
                    who=None) -> UnblockResult:
    """Confirm a pending request and lift the block: an approver other than the one who requested it."""
    who = who if who is not None else ctx.actor
    subject = f"{component} {version}"
    req = _request_for(ctx, component, version, model)
    if req is None:
        authorise(ctx, who, Action.UNBLOCK_CONFIRM, subject)  # a viewer hears 403 before "no request"
        refusal = f"no pending request to unblock {subject}; an operator requests it first (unblock request)"
        ctx.store.audit(who, "authz.refused", subject, {"action": str(Action.UNBLOCK_CONFIRM), "reason": refusal})
        raise PolicyViolation(refusal)
    requester = Who(norm_name(req.requested_by), None, req.requester_account)
    authorise(ctx, who, Action.UNBLOCK_CONFIRM, subject, Facts(other=requester),
              refusal=lambda d: d.reason.replace("this unblock", f"the unblock of {subject}"))
    return unblock(ctx, component, version, f"{reason or req.reason} (requested by {req.requested_by}, "
                   f"audit #{req.audit_seq})", model=model, by=who)
