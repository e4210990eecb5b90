"""The console's one door to the operations: every read and every action its pages need.

Each action runs as the signed-in account (an `Actor` from auth/identity.py) and is authorised
with the same matrix as the CLI and the operator API (policy/authz.decide, through
operations.common.authorise, which audits a refusal): the pages call provisioner/operations/, as
the CLI and the API do, and read the store directly only for what a page alone shows.

Two-person unblock is the operations' (operations/blocks.py): a request is an audit entry
(`firmware.unblock.request`) in the hash chain; a confirmation by another approver, read back from
the chain, lifts the block. A request written beside the chain is not in it, so it cannot be confirmed.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter

from sqlalchemy import select

from provisioner.auth.authenticate import with_password
from provisioner.auth.identity import Account, Actor, Method
from provisioner.context import Context
from provisioner.errors import PolicyViolation, ReleaseError
from provisioner.operations import audit as audit_ops
from provisioner.operations import blocks as block_ops
from provisioner.operations import common
from provisioner.operations import nodes as node_ops
from provisioner.operations import releases as release_ops
from provisioner.operations import rollouts as rollout_ops
from provisioner.policy.authz import Action
from provisioner.policy.gate import staging_environment
from provisioner.releases.diff import diff_releases
from provisioner.releases.view import ReleaseView
from provisioner.rollout.record import RolloutRecord
from provisioner.store.models import RolloutNodeRow, RolloutRow, RolloutStepRow

log = logging.getLogger(__name__)



# -- who acts ---------------------------------------------------------------------------------------
def acting(base: Context, actor: Actor) -> Context:
    """A view of `base` (same store, spec, artifacts) whose writes are `actor`'s."""
    _ = base.store  # opened once: every request's view shares it
    return base.acting_as(actor)


def sign_in(ctx: Context, username: str, password: str, client: str) -> Actor:
    """NotAuthenticated (one line, never whether the name exists) unless the password is right."""
    return with_password(ctx.store.accounts, username, password, client=client)


def actor_for(ctx: Context, account_id: int, method: str, client: str) -> Actor | None:
    """The session's account read again (role changes and disabling apply at once); None if gone."""
    account: Account | None = ctx.store.accounts.by_id(account_id)
    if account is None or account.disabled:
        return None
    return Actor.of_account(account, Method(method), client=client)


def may(actor: Actor, action: Action) -> bool:
    """Whether the matrix lets the actor's role do `action` at all (to show or hide a form)."""
    from provisioner.policy.authz import decide

    return decide(action, common.who_of(actor)).allowed


# -- dashboard ----------------------------------------------------------------------------------------
def dashboard(ctx: Context) -> dict:
    rows = node_ops.compliance(ctx)
    envs = []
    for env in ctx.spec.policy.environments:
        rid = ctx.store.current_release_id(env)
        mine = [r for r in rows if r["environment"] == env]
        counts = Counter("unknown" if r["compliant"] is None else "compliant" if r["compliant"] else "not"
                         for r in mine)
        open_ = RolloutRecord(ctx.store).open_rollout(env)
        last = RolloutRecord(ctx.store).rollouts(env, limit=1)
        envs.append({"name": env, "release": rid, "author": ctx.store.release_meta(rid)["author"] if rid else None,
                     "rollout": _rollout_dict(open_ or (last[-1] if last else None)),
                     "nodes": len(mine), "compliant": counts["compliant"], "not_compliant": counts["not"],
                     "unknown": counts["unknown"],
                     "states": dict(Counter(r["state"] for r in mine))})
    return {"environments": envs, "blocks": blocks(ctx)["active"], "releases": releases(ctx)[-5:][::-1]}


def _rollout_dict(r) -> dict | None:
    if r is None:
        return None
    return {"id": r.id, "environment": r.environment, "release": r.release_id, "kind": r.kind,
            "status": r.status, "reason": r.reason, "by": r.by, "created_at": r.created_at.isoformat()[:19],
            "finished_at": r.finished_at.isoformat()[:19] if r.finished_at else None}


# -- releases and the gate ----------------------------------------------------------------------------
def releases(ctx: Context) -> list[dict]:
    return ctx.store.list_releases()


def release_page(ctx: Context, ref: str, target: str = "production") -> dict:
    rel = ctx.store.get_release(ref)
    meta = ctx.store.release_meta(rel.id)
    verdict = release_ops.gate(ctx, rel.id, target=target)
    prod = ctx.store.current_release_id(target)
    view = ReleaseView.of(rel)
    changes = diff_releases(ReleaseView.of(ctx.store.get_release(prod)), view) if prod and prod != rel.id else []
    pins = {m: [{"name": c.name, "version": c.version, "method": c.method} for c in view.pins(m) or ()]
            for m in sorted(view.manifests)}
    return {"id": rel.id, "short": rel.short, **meta, "pins": pins, "target": target, "target_release": prod,
            "diff": [c.as_dict() for c in changes], "gate": verdict.as_dict(),
            "approvals": ctx.store.approvals(rel.id),
            "environments": [r["environments"] for r in releases(ctx) if r["id"] == rel.id][0],
            "staging": staging_environment(ctx.site.floor())}


def approve(ctx: Context, actor: Actor, ref: str, comment: str) -> bool:
    """One approval by `actor` (refused, and audited, for the author, a role below approver, a
    release that failed on staging or pins a blocked version); False if it was there already."""
    return bool(release_ops.approve(acting(ctx, actor), ref, who=actor, comment=comment))


def withdraw(ctx: Context, actor: Actor, ref: str, comment: str) -> bool:
    return bool(release_ops.approve(acting(ctx, actor), ref, who=actor, comment=comment, withdraw=True))


# -- rollouts -----------------------------------------------------------------------------------------
def rollouts(ctx: Context, limit: int = 50) -> list[dict]:
    return [_rollout_dict(r) for r in RolloutRecord(ctx.store).rollouts(limit=limit)][::-1]


def rollout(ctx: Context, rid: int) -> dict:
    """The rollout, its nodes grouped by wave, counts per status, and the last step seq (for live updates)."""
    d = rollout_ops.rollout_detail(ctx, rid)
    waves: dict[int, list] = {}
    for n in d["nodes"]:
        waves.setdefault(n["wave"], []).append(n)
    d["waves"] = [{"wave": w, "label": "canary" if w == 0 else "held" if w < 0 else f"wave {w}", "nodes": ns}
                  for w, ns in sorted(waves.items(), key=lambda kv: (kv[0] < 0, kv[0]))]
    d["counts"] = dict(Counter(n["status"] for n in d["nodes"]))
    with ctx.store.db.read() as c:
        d["last_seq"] = c.scalar(select(RolloutStepRow.seq).where(RolloutStepRow.rollout_id == rid)
                                 .order_by(RolloutStepRow.seq.desc()).limit(1)) or 0
    return d


def rollout_changes(ctx: Context, rid: int, after: int, limit: int = 500) -> dict:
    """What happened in rollout `rid` since step `after`: the steps, the rows of the nodes they
    touched, and the rollout's status and counts. Two or three indexed queries, whatever its size."""
    with ctx.store.db.read() as c:
        r = c.execute(select(RolloutRow.status, RolloutRow.reason).where(RolloutRow.id == rid)).first()
        if r is None:
            raise ReleaseError(f"no rollout {rid}")
        steps = [{"seq": s.seq, "node": s.node, "step": s.step, "phase": s.phase,
                  "error": (s.details or {}).get("error"), "at": s.at.isoformat()[11:19]}
                 for s in c.execute(select(RolloutStepRow).where(RolloutStepRow.rollout_id == rid,
                                                                 RolloutStepRow.seq > after)
                                    .order_by(RolloutStepRow.seq).limit(limit))]
        touched = sorted({s["node"] for s in steps})
        nodes = {}
        if touched:
            for n in c.execute(select(RolloutNodeRow.node, RolloutNodeRow.status, RolloutNodeRow.step,
                                      RolloutNodeRow.error).where(RolloutNodeRow.rollout_id == rid,
                                                                  RolloutNodeRow.node.in_(touched))):
                nodes[n.node] = {"status": n.status, "step": n.step, "error": n.error}
    return {"status": r.status, "reason": r.reason, "steps": steps, "nodes": nodes}


def rollout_node_statuses(ctx: Context, rid: int) -> tuple[dict, dict]:
    """Every node's row of the rollout, and counts per status (sent when the rollout's status changes:
    an abort skips nodes without a step)."""
    with ctx.store.db.read() as c:
        nodes = {n.node: {"status": n.status, "step": n.step, "error": n.error}
                 for n in c.execute(select(RolloutNodeRow.node, RolloutNodeRow.status, RolloutNodeRow.step,
                                           RolloutNodeRow.error).where(RolloutNodeRow.rollout_id == rid))}
    return nodes, dict(Counter(n["status"] for n in nodes.values()))


def _halted(ctx: Context, rid: int):
    r = RolloutRecord(ctx.store).rollout(rid)
    if r is None:
        raise ReleaseError(f"no rollout {rid}")
    return r


def resume(ctx: Context, actor: Actor, rid: int, reason: str) -> None:
    """Let a halted rollout go on, in a thread of this server (the page follows it live).

    The checks `rollout resume` makes come first, here, so a refusal is an answer, not a log line."""
    _need(reason, "reason")
    me = acting(ctx, actor)
    common.authorise(me, actor, Action.APPLY, f"rollout {rid}")
    r = _halted(ctx, rid)
    if r.status not in ("halted", "interrupted"):
        raise PolicyViolation(f"rollout {rid} is {r.status}: only a halted or interrupted rollout can be resumed")
    common.refuse_blocked(me, ctx.store.get_release(r.release_id), "resume")

    def run():
        try:
            rollout_ops.resume(me, rid, reason)
        except Exception:  # noqa: BLE001 - a thread has no caller: the rollout's own record says what happened
            log.exception("console.resume.failed rollout=%s", rid)

    threading.Thread(target=run, name=f"console-resume-{rid}", daemon=True).start()


def abort(ctx: Context, actor: Actor, rid: int, reason: str):
    _need(reason, "reason")
    return rollout_ops.abort(acting(ctx, actor), rid, reason)


def _need(value: str, name: str) -> None:
    from provisioner.errors import InputError

    if not (value or "").strip():
        raise InputError(f"a {name} is required (it is audited)")


# -- blocks -------------------------------------------------------------------------------------------
def blocks(ctx: Context) -> dict:
    """Active blocks, each with its pending unblock request (from the audit chain) if any."""
    pending = {(r.component, r.version): r for r in block_ops.pending_unblocks(ctx)}
    active = ctx.store.active_blocks()
    for b in active:
        r = pending.get((b["component"], b["version"]))
        b["request"] = None if r is None else {"by": r.requested_by, "account_id": r.requester_account,
                                               "reason": r.reason, "seq": r.audit_seq, "model": r.model}
    return {"active": active}


def block(ctx: Context, actor: Actor, component: str, version: str, reason: str, incident: str,
          model: str | None = None):
    """One person may block (on-call must act fast); running rollouts pinning it halt at their next step."""
    return block_ops.block(acting(ctx, actor), component, version, reason, model=model or None,
                           incident=incident.strip() or None)


def request_unblock(ctx: Context, actor: Actor, component: str, version: str, reason: str) -> None:
    _need(reason, "reason")
    block_ops.unblock_request(acting(ctx, actor), component, version, reason.strip(), who=actor)


def confirm_unblock(ctx: Context, actor: Actor, component: str, version: str):
    """The second person: another approver confirms the pending request, and the block is lifted."""
    return block_ops.unblock_confirm(acting(ctx, actor), component, version, who=actor)


# -- nodes and audit ----------------------------------------------------------------------------------
def nodes(ctx: Context, environment: str | None = None) -> list[dict]:
    return node_ops.compliance(ctx, [environment] if environment else None)


def node(ctx: Context, name: str) -> dict:
    from provisioner.cli.node_cmd import node_detail

    return node_detail(ctx, name)


def audit_log(ctx: Context, limit: int = 200) -> list[dict]:
    return ctx.store.audit_entries(limit)[::-1]


def verify_audit(ctx: Context) -> dict:
    """The chain, and the server's signed checkpoints when they are there (as `audit verify`)."""
    return {"checkpoints": None, **audit_ops.verify(ctx)}
