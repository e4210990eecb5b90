"""Releases through the gate: the gate's verdict, approve (or withdraw), promote.

The two-person rule lives here and in policy/authz: an approval is an authenticated account's,
recorded in the audit chain; the author, a release that failed on staging or pins a blocked
version are refused, and every refusal is audited.
"""

from __future__ import annotations

from provisioner.context import Context
from provisioner.errors import PolicyViolation
from provisioner.operations.common import (
    active_blocks,
    author_of,
    authorise,
    known_environment,
    norm_name,
    refuse_blocked,
)
from provisioner.operations.results import ApprovalResult
from provisioner.plan import pinned_blocked
from provisioner.policy.authz import Action, Facts, Who, same_person
from provisioner.policy.gate import GateVerdict, StagingNode, evaluate, rules_in_force, staging_environment
from provisioner.releases.view import ReleaseView
from provisioner.rollout.record import RolloutRecord
from provisioner.spec.models import StagingGate
from provisioner.store.repo import aware, now


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
    author = author_of(ctx, rel.id, meta)
    approvers = [a["approver"] for a in ctx.store.approvals(rel.id)
                 if not same_person(Who(norm_name(a["approver"]), None, a["account_id"]), author)]
    verdict = evaluate(rel.id, author.username, StagingGate(**rules), nodes, outcomes, approvers, now())
    verdict.facts.update(rules_source=source, release_policy=own)
    return verdict


def approve(ctx: Context, release_ref: str, who=None, comment: str = "", *,
            withdraw: bool = False) -> ApprovalResult:
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
        return _approval(ctx, rel.id, who, ctx.store.withdraw_approval(rel.id, who, comment), withdrawn=True)
    author = author_of(ctx, rel.id, ctx.store.release_meta(rel.id))
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
    bad = pinned_blocked(ReleaseView.of(rel), active_blocks(ctx))
    if bad:
        m, c, v, b = bad[0]
        refuse(f"release {rel.short} pins {m} {c} {v}, blocked ({b.reason}); it cannot be approved")
    return _approval(ctx, rel.id, who, ctx.store.approve(rel.id, who, comment), withdrawn=False)


def _approval(ctx: Context, release_id: str, who, changed: bool, withdrawn: bool) -> ApprovalResult:
    return ApprovalResult(release_id, getattr(who, "name", str(who)), changed, withdrawn,
                          [a["approver"] for a in ctx.store.approvals(release_id)])


def promote(ctx: Context, release_ref: str, to: str, force_gate: bool = False) -> str | None:
    """Point `to` at the release; the previous release's id (None: it pointed at none)."""
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



def build(ctx: Context) -> dict:
    """Freeze the spec into a release (stored, its artifacts imported), as the acting account."""
    from provisioner.releases.build import freeze, import_artifacts

    spec = ctx.spec
    authorise(ctx, ctx.actor, Action.BUILD, "release")
    rel = freeze(spec, [(b["model"], b["component"], b["version"]) for b in ctx.store.active_blocks()])
    imported = import_artifacts(ctx.settings.spec_dir, rel, ctx.artifacts)
    existing = ctx.store.list_releases()
    parent = existing[-1]["id"] if existing else None
    created = ctx.store.add_release(rel, ctx.actor, parent_id=parent if parent != rel.id else None)
    ctx.store.sync_nodes(spec)
    return {"id": rel.id, "created": created, "artifacts": len(rel.document["artifacts"]),
            "templates": len(rel.document["templates"]), "files_newly_stored": imported,
            "nodes": len(spec.nodes()), "author": ctx.actor.name}


def show(ctx: Context, release_ref: str) -> dict:
    rel = ctx.store.get_release(release_ref)
    return {**ctx.store.release_meta(rel.id), "site": rel.document["site"], "document": rel.document}
