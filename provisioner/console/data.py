"""The console's one door to the operations: every read and every action its pages need.

Each action runs as the signed-in account (an `Actor` from auth/identity.py) and is authorised
with the same matrix as the CLI (policy/authz.decide, through pipeline.authorise, which audits a
refusal). Today this calls provisioner/pipeline.py and the store; the operations package takes
their place later, and only this module changes then.

Two-person unblock: a request is an audit entry (`firmware.unblock.request`) in the hash chain;
a confirmation by another approver, read back from the chain, lifts the block. A request
written beside the chain is not in it, so it cannot be confirmed.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections import Counter

from sqlalchemy import select

from provisioner import pipeline
from provisioner.auth.authenticate import with_password
from provisioner.auth.identity import Account, Actor, Method
from provisioner.context import Context
from provisioner.errors import PolicyViolation, ReleaseError
from provisioner.plan import pins_by_model
from provisioner.policy.authz import Action, Facts, Who
from provisioner.policy.gate import staging_environment
from provisioner.releases.diff import diff_releases
from provisioner.rollout.record import RolloutRecord
from provisioner.store import audit as audit_chain
from provisioner.store.models import RolloutNodeRow, RolloutRow, RolloutStepRow

log = logging.getLogger(__name__)

UNBLOCK_REQUEST = "firmware.unblock.request"
_CACHED = ("spec", "store", "site", "artifacts")


# -- who acts ---------------------------------------------------------------------------------------
def acting(base: Context, actor: Actor) -> Context:
    """A view of `base` (same store, spec, artifacts) whose writes are `actor`'s."""
    ctx = Context(dataclasses.replace(base.settings, actor=actor, token=None))
    for name in _CACHED:
        if name in base.__dict__:
            ctx.__dict__[name] = base.__dict__[name]
    ctx.__dict__["store"] = base.store
    return ctx


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

    return decide(action, pipeline._who(actor)).allowed


# -- dashboard ----------------------------------------------------------------------------------------
def dashboard(ctx: Context) -> dict:
    rows = pipeline.compliance(ctx)
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
    verdict = pipeline.gate(ctx, rel.id, target=target)
    prod = ctx.store.current_release_id(target)
    changes = diff_releases(ctx.store.get_release(prod).document, rel.document) if prod and prod != rel.id else []
    pins = {m: [{"name": c["name"], "version": c["version"], "method": c["method"]} for c in comps]
            for m, comps in sorted(pins_by_model(rel.document).items())}
    return {"id": rel.id, "short": rel.short, **meta, "pins": pins, "target": target, "target_release": prod,
            "diff": [c.as_dict() for c in changes], "gate": verdict.as_dict(),
            "approvals": ctx.store.approvals(rel.id),
            "environments": [r["environments"] for r in releases(ctx) if r["id"] == rel.id][0],
            "staging": staging_environment(ctx.site.floor())}


def approve(ctx: Context, actor: Actor, ref: str, comment: str) -> bool:
    """One approval by `actor` (refused, and audited, for the author, a role below approver, a
    release that failed on staging or pins a blocked version); False if it was there already."""
    return pipeline.approve(acting(ctx, actor), ref, who=actor, comment=comment)


def withdraw(ctx: Context, actor: Actor, ref: str, comment: str) -> bool:
    return pipeline.approve(acting(ctx, actor), ref, who=actor, comment=comment, withdraw=True)


# -- rollouts -----------------------------------------------------------------------------------------
def rollouts(ctx: Context, limit: int = 50) -> list[dict]:
    return [_rollout_dict(r) for r in RolloutRecord(ctx.store).rollouts(limit=limit)][::-1]


def rollout(ctx: Context, rid: int) -> dict:
    """The rollout, its nodes grouped by wave, counts per status, and the last step seq (for live updates)."""
    from provisioner.cli.rollout_cmd import rollout_detail

    d = rollout_detail(ctx, rid)
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
    pipeline.authorise(me, actor, Action.APPLY, f"rollout {rid}")
    r = _halted(ctx, rid)
    if r.status not in ("halted", "interrupted"):
        raise PolicyViolation(f"rollout {rid} is {r.status}: only a halted or interrupted rollout can be resumed")
    pipeline.refuse_blocked(me, ctx.store.get_release(r.release_id), "resume")

    def run():
        try:
            pipeline.resume(me, rid, reason)
        except Exception:  # noqa: BLE001 - a thread has no caller: the rollout's own record says what happened
            log.exception("console.resume.failed rollout=%s", rid)

    threading.Thread(target=run, name=f"console-resume-{rid}", daemon=True).start()


def abort(ctx: Context, actor: Actor, rid: int, reason: str):
    _need(reason, "reason")
    me = acting(ctx, actor)
    pipeline.authorise(me, actor, Action.APPLY, f"rollout {rid}")
    return pipeline.abort(me, rid, reason)


def _need(value: str, name: str) -> None:
    from provisioner.errors import InputError

    if not (value or "").strip():
        raise InputError(f"a {name} is required (it is audited)")


# -- blocks -------------------------------------------------------------------------------------------
def blocks(ctx: Context) -> dict:
    """Active blocks, each with its pending unblock request (from the audit chain) if any."""
    active = ctx.store.active_blocks()
    with ctx.store.db.session() as s:
        for b in active:
            b["request"] = _pending_request(s, b["component"], b["version"])
    return {"active": active}


def _pending_request(s, component: str, version: str) -> dict | None:
    entries = audit_chain.chained_entries(s, f"{component} {version}",
                                          ("firmware.block", "firmware.unblock", UNBLOCK_REQUEST))
    pending = None
    for e in entries:
        pending = ({"by": e.actor, "account_id": e.account_id, "reason": e.details.get("reason", ""),
                    "at": e.at.isoformat()[:19], "seq": e.seq, "model": e.details.get("model")}
                   if e.action == UNBLOCK_REQUEST and e.account_id is not None else None)
    return pending


def block(ctx: Context, actor: Actor, component: str, version: str, reason: str, incident: str,
          model: str | None = None) -> dict:
    """One person may block (on-call must act fast); running rollouts pinning it halt at their next step."""
    me = acting(ctx, actor)
    pipeline.authorise(me, actor, Action.BLOCK, f"{component} {version}")
    return pipeline.block(me, component, version, reason, model=model or None, incident=incident.strip() or None)


def request_unblock(ctx: Context, actor: Actor, component: str, version: str, reason: str) -> None:
    _need(reason, "reason")
    me = acting(ctx, actor)
    subject = f"{component} {version}"
    pipeline.authorise(me, actor, Action.UNBLOCK_REQUEST, subject)
    if not any(b["component"] == component and b["version"] == version for b in ctx.store.active_blocks()):
        raise PolicyViolation(f"{subject} is not blocked")
    ctx.store.audit(actor, UNBLOCK_REQUEST, subject, {"reason": reason.strip()})


def confirm_unblock(ctx: Context, actor: Actor, component: str, version: str) -> dict:
    """The second person: another approver confirms the pending request, and the block is lifted."""
    me = acting(ctx, actor)
    subject = f"{component} {version}"
    with ctx.store.db.session() as s:
        req = _pending_request(s, component, version)
    if req is None:
        raise PolicyViolation(f"nobody has requested to unblock {subject}; request it first")
    requester = Who(pipeline._norm(req["by"]), None, req["account_id"])
    pipeline.authorise(me, actor, Action.UNBLOCK_CONFIRM, subject, Facts(other=requester))
    return pipeline.unblock(me, component, version, f"{req['reason']} (requested by {req['by']}, "
                            f"confirmed by {actor.name})")


# -- nodes and audit ----------------------------------------------------------------------------------
def nodes(ctx: Context, environment: str | None = None) -> list[dict]:
    return pipeline.compliance(ctx, [environment] if environment else None)


def node(ctx: Context, name: str) -> dict:
    from provisioner.cli.node_cmd import node_detail

    return node_detail(ctx, name)


def audit_log(ctx: Context, limit: int = 200) -> list[dict]:
    return ctx.store.audit_entries(limit)[::-1]


def verify_audit(ctx: Context) -> dict:
    """The chain, and the server's signed checkpoints when they are there (as `audit verify`)."""
    from provisioner.cli.audit_cmd import _paths
    from provisioner.store import checkpoints

    n, problems = ctx.store.verify_audit()
    out = {"entries": n, "checkpoints": None}
    key, file = _paths(ctx)
    if file.exists() and checkpoints.public_path(key).exists():
        good, more = checkpoints.verify(ctx.store, file, checkpoints.load_public_key(checkpoints.public_path(key)))
        problems = problems + more
        out["checkpoints"] = good
    return {**out, "ok": not problems, "problems": [str(p) for p in problems]}
