"""The operator API's routes: parse the request, call the operation, return its result as JSON.

Authentication and authorisation are not here: the app does both for every route, from the
table below (`ROUTES`), before a handler runs. Handlers get a `Call`: the context acting as the
authenticated account, the JSON body and the query.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass

from flask import Response, request

from provisioner.errors import InputError
from provisioner.operations import audit as audit_ops
from provisioner.operations import blocks, common, node_lifecycle, nodes, releases, rollouts
from provisioner.plan import saved_plan
from provisioner.policy.authz import Action
from provisioner.policy.gate import staging_environment

from .events import last_event_id, rollout_events
from .table import Route


@dataclass
class Call:
    ctx: object       # Context acting as the caller
    deps: object      # OperatorDeps
    body: dict
    args: dict

    def text(self, name: str, required: bool = True, default: str | None = None) -> str | None:
        v = self.body.get(name, default)
        if v is None and required:
            raise InputError(f"the request body needs {name!r}")
        if v is not None and not isinstance(v, str):
            raise InputError(f"{name!r} must be a string")
        return v

    def flag(self, name: str, default: bool = False) -> bool:
        v = self.args.get(name)
        return default if v is None else v.lower() in ("1", "true", "yes")

    def number(self, name: str, default: int) -> int:
        try:
            return int(self.args.get(name, default))
        except ValueError:
            raise InputError(f"query parameter {name!r} must be a whole number") from None


def _promote_action(req, deps) -> Action:
    to = (req.get_json(silent=True) or {}).get("to") or req.view_args.get("env")
    staging = staging_environment(deps.ctx.site.floor())
    return Action.PROMOTE_STAGING if to == staging else Action.PROMOTE_PRODUCTION


def _rollback_action(req, deps) -> Action:
    return Action.ROLLBACK_TO if (req.get_json(silent=True) or {}).get("to") else Action.ROLLBACK_PREVIOUS


# -- releases ------------------------------------------------------------------------------------
def list_releases(c: Call):
    return c.ctx.store.list_releases()


def build_release(c: Call):
    c.ctx.__dict__.pop("spec", None)  # this request's context: the spec directory as it is now, as a CLI reads it
    return releases.build(c.ctx)


def show_release(c: Call, ref: str):
    return releases.show(c.ctx, ref)


def release_gate(c: Call, ref: str):
    return releases.gate(c.ctx, ref, target=c.args.get("target", "production")).as_dict()


def approve_release(c: Call, ref: str):
    return releases.approve(c.ctx, ref, c.ctx.actor, c.text("comment", False, "")).as_dict()


def withdraw_approval(c: Call, ref: str):
    return releases.approve(c.ctx, ref, c.ctx.actor, c.text("comment", False, ""), withdraw=True).as_dict()


def promote_release(c: Call, env: str):
    ref = c.text("release")
    rel = c.ctx.store.get_release(ref)
    previous = releases.promote(c.ctx, rel.id, env)
    return {"environment": env, "release": rel.id, "previous": previous}


# -- plans and rollouts --------------------------------------------------------------------------
def show_environment(c: Call, env: str):
    """What a client asks before changing an environment: its release, and whether it is protected."""
    common.known_environment(c.ctx, env)
    return {"environment": env, "release": c.ctx.store.current_release_id(env),
            "protected": bool(c.ctx.spec.policy.protected(env))}


def plan_environment(c: Call, env: str):
    p, unread, observed = nodes.plan_observed(c.ctx, env, refresh=c.flag("refresh", True))
    out = {**p.as_dict(), "unreachable": unread}
    if c.flag("saved"):  # what `plan -o FILE` keeps, for `apply FILE` later
        out["saved_plan"] = saved_plan(p, unread, observed)
    return out


def _accepted(c: Call, rid: int):
    """202: the rollout's id, its event stream, and how it started (created with counts, or resumed)."""
    return {"rollout": rid, "events": f"/api/v1/rollouts/{rid}/events", "status": "running",
            "started": c.deps.workers.started.get(rid)}


def apply_environment(c: Call, env: str):
    common.known_environment(c.ctx, env)
    ctx, plan = c.ctx, c.body.get("plan")
    if plan is not None:  # `apply PLAN_FILE`: exactly that plan, refused if it no longer holds
        if not isinstance(plan, dict) or plan.get("environment") != env:
            raise InputError(f"'plan' must be a plan saved for {env} (`provisioner plan {env} -o FILE`)")
        return _accepted(c, c.deps.workers.start(lambda progress, on_engine: rollouts.apply_saved(
            ctx, plan, progress=progress, on_engine=on_engine)))
    return _accepted(c, c.deps.workers.start(lambda progress, on_engine: rollouts.apply(
        ctx, env, progress=progress, on_engine=on_engine)))


def fix_drift(c: Call, env: str):
    """Re-provision the given drifted nodes of the environment: a rollout of kind drift."""
    common.known_environment(c.ctx, env)
    only, ctx = c.body.get("nodes"), c.ctx
    if not isinstance(only, list) or not only or not all(isinstance(n, str) for n in only):
        raise InputError("'nodes' must be a non-empty list of node names (from GET /api/v1/drift)")
    return _accepted(c, c.deps.workers.start(lambda progress, on_engine: rollouts.apply(
        ctx, env, kind="drift", reason="drift correction", only=set(only), progress=progress,
        on_engine=on_engine)))


def rollback_environment(c: Call, env: str):
    to, ctx = c.text("to", False), c.ctx
    common.known_environment(ctx, env)
    return _accepted(c, c.deps.workers.start(lambda progress, on_engine: rollouts.rollback(
        ctx, env, to, progress=progress, on_engine=on_engine)))


def list_rollouts(c: Call):
    return rollouts.rollouts(c.ctx, c.args.get("environment"), c.number("limit", 20))


def show_rollout(c: Call, rid: int):
    return rollouts.rollout_detail(c.ctx, rid)


def rollout_event_stream(c: Call, rid: int):
    after = last_event_id(request.headers.get("Last-Event-ID") or c.args.get("last_event_id"))
    stream = rollout_events(c.ctx, rid, after, poll=c.deps.event_poll)
    return Response(stream, content_type="text/event-stream",
                    headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


def resume_rollout(c: Call, rid: int):
    reason, ctx = c.text("reason"), c.ctx
    return _accepted(c, c.deps.workers.start(lambda progress, on_engine: rollouts.resume(
        ctx, rid, reason, progress=progress, on_engine=on_engine)))


def abort_rollout(c: Call, rid: int):
    return rollouts.rollout_dict(rollouts.abort(c.ctx, rid, c.text("reason")))


# -- blocks --------------------------------------------------------------------------------------
def list_blocks(c: Call):
    return {"blocks": c.ctx.store.active_blocks(),
            "unblock_requests": [r.as_dict() for r in blocks.pending_unblocks(c.ctx)]}


def block_version(c: Call):
    return blocks.block(c.ctx, c.text("component"), c.text("version"), c.text("reason"),
                        model=c.text("model", False), incident=c.text("incident", False)).as_dict()


def request_unblock(c: Call):
    return blocks.unblock_request(c.ctx, c.text("component"), c.text("version"), c.text("reason"),
                                  model=c.text("model", False)).as_dict()


def confirm_unblock(c: Call):
    return blocks.unblock_confirm(c.ctx, c.text("component"), c.text("version"), c.text("reason", False, ""),
                                  model=c.text("model", False)).as_dict()


# -- what is -------------------------------------------------------------------------------------
def site_status(c: Call):
    env, refresh = c.args.get("environment"), c.flag("refresh", False)

    def answer() -> tuple[bytes, bytes]:
        rows, unread = nodes.status(c.ctx, env, refresh=refresh)
        body = json.dumps({"nodes": rows, "unreachable": unread}, default=str).encode()
        return body, gzip.compress(body, 6)

    # from the stored reads, many pollers share one computation a second (cache.py)
    plain, packed = answer() if refresh else c.deps.snapshots.get(("status", env), answer,
                                                                  lambda: nodes.status_version(c.ctx))
    if "gzip" in request.headers.get("Accept-Encoding", ""):  # 1,000 nodes: 600 kB, 30 kB gzipped
        return Response(packed, content_type="application/json",
                        headers={"Content-Encoding": "gzip", "Vary": "Accept-Encoding"})
    return Response(plain, content_type="application/json", headers={"Vary": "Accept-Encoding"})


def list_nodes(c: Call):
    env = c.args.get("environment")
    if env:
        common.known_environment(c.ctx, env)
    return [{"node": r.name, "rack": r.rack, "model": r.model, "environment": r.environment, "state": r.state,
             "state_reason": r.state_reason, "release": r.release_id, "observed": r.observed or {}}
            for r in c.ctx.store.nodes(env)]


def show_node(c: Call, name: str):
    return node_lifecycle.detail(c.ctx, name)


def node_maintenance(c: Call, name: str):
    on = c.body.get("on")
    if not isinstance(on, bool):
        raise InputError("'on' must be true (take the node out of rollouts) or false (give it back)")
    return node_lifecycle.maintenance(c.ctx, name, on, c.text("reason"))


def clear_node(c: Call, name: str):
    return node_lifecycle.clear(c.ctx, name, c.text("reason"))


def drift_report(c: Call):
    items, unread = nodes.drift(c.ctx, c.args.get("environment"))
    return {"drift": [i.as_dict() for i in items], "unreachable": unread}


def change_history(c: Call):
    return nodes.history(c.ctx, c.number("limit", 40))


def audit_log(c: Call):
    return c.ctx.store.audit_entries(c.number("limit", 100))


def audit_verify(c: Call):
    return audit_ops.verify(c.ctx)


# -- accounts ------------------------------------------------------------------------------------
def list_accounts(c: Call):
    return c.ctx.store.accounts.list()


def add_account(c: Call):
    return c.ctx.store.accounts.add(c.text("username"), c.text("role"), c.ctx.actor,
                                    password=c.text("password", False)).as_dict()


def disable_account(c: Call, name: str):
    changed = c.ctx.store.accounts.disable(name, c.ctx.actor, c.text("reason", False, ""))
    return {"username": name, "disabled": changed}


def _days(c: Call) -> float:
    days = c.body.get("days", 90)
    if isinstance(days, bool) or not isinstance(days, int | float) or not 0 < days <= 366:
        raise InputError("days must be a number of days from 1 to 366")
    return days


def create_token_for(c: Call, name: str):
    """A personal API token for any account (an admin's bootstrap, as `provisioner token create`)."""
    secret, record = c.ctx.store.accounts.create_token(name, c.text("name"), c.ctx.actor, _days(c))
    return {**record, "token": secret}


def list_tokens(c: Call):
    return c.ctx.store.accounts.tokens(c.args.get("user"))


def revoke_token(c: Call, tid: int):
    return {"id": tid, "revoked": c.ctx.store.accounts.revoke_token(tid, c.ctx.actor)}


def create_own_token(c: Call):
    """A personal API token for the caller's own account (what `provisioner login` keeps)."""
    secret, record = c.ctx.store.accounts.create_token(c.ctx.actor.name, c.text("name"), c.ctx.actor, _days(c))
    return {**record, "token": secret}


def whoami(c: Call):
    a = c.ctx.actor
    return {**a.account.as_dict(), "auth_method": str(a.method), "client": a.client}


V = Action.VIEW
ROUTES: list[Route] = [
    Route("GET", "/api/v1/whoami", V, whoami, "The authenticated account"),
    Route("POST", "/api/v1/tokens", V, create_own_token, "A personal API token for the caller's account "
          "(shown once)", 201, body={"name": ("string", True), "days": ("number", False)}),
    Route("GET", "/api/v1/releases", V, list_releases, "Stored releases, oldest first"),
    Route("POST", "/api/v1/releases", Action.BUILD, build_release, "Freeze the server's spec into a release", 201),
    Route("GET", "/api/v1/releases/<ref>", V, show_release, "One release (id or unique prefix)"),
    Route("GET", "/api/v1/releases/<ref>/gate", V, release_gate, "The staging gate's verdict",
          query={"target": "string"}),
    Route("POST", "/api/v1/releases/<ref>/approvals", Action.APPROVE, approve_release,
          "Approve the release as the caller", 201, body={"comment": ("string", False)}),
    Route("DELETE", "/api/v1/releases/<ref>/approvals", Action.APPROVE, withdraw_approval,
          "Withdraw the caller's approval", body={"comment": ("string", False)}),
    Route("PUT", "/api/v1/environments/<env>/release", _promote_action, promote_release,
          "Promote: point the environment at a release", body={"release": ("string", True)}),
    Route("GET", "/api/v1/environments/<env>", V, show_environment,
          "An environment: its release, and whether policy.yaml protects it"),
    Route("GET", "/api/v1/environments/<env>/plan", V, plan_environment, "What would change, node by node "
          "(saved=true: with the plan to keep for apply)", query={"refresh": "boolean", "saved": "boolean"}),
    Route("POST", "/api/v1/environments/<env>/rollouts", Action.APPLY, apply_environment,
          "Apply: start (or resume) a rollout of the environment's release; with `plan`, exactly a saved plan",
          202, body={"plan": ("object", False)}),
    Route("POST", "/api/v1/environments/<env>/drift-fix", Action.APPLY, fix_drift,
          "Re-provision drifted nodes of the environment (a rollout)", 202, body={"nodes": ("array", True)}),
    Route("POST", "/api/v1/environments/<env>/rollback", _rollback_action, rollback_environment,
          "Roll back to the previous release, or `to` one", 202, body={"to": ("string", False)}),
    Route("GET", "/api/v1/rollouts", V, list_rollouts, "Rollouts, newest last",
          query={"environment": "string", "limit": "integer"}),
    Route("GET", "/api/v1/rollouts/<int:rid>", V, show_rollout, "A rollout, per node and step"),
    Route("GET", "/api/v1/rollouts/<int:rid>/events", V, rollout_event_stream,
          "Live steps of a rollout (Server-Sent Events; Last-Event-ID resumes)", stream=True),
    Route("POST", "/api/v1/rollouts/<int:rid>/resume", Action.APPLY, resume_rollout,
          "Let a halted rollout go on", 202, body={"reason": ("string", True)}),
    Route("POST", "/api/v1/rollouts/<int:rid>/abort", Action.APPLY, abort_rollout,
          "Give a halted rollout up", body={"reason": ("string", True)}),
    Route("GET", "/api/v1/blocks", V, list_blocks, "Blocked versions and pending unblock requests"),
    Route("POST", "/api/v1/blocks", Action.BLOCK, block_version, "Block a firmware version everywhere", 201,
          body={"component": ("string", True), "version": ("string", True), "reason": ("string", True),
                "model": ("string", False), "incident": ("string", False)}),
    Route("POST", "/api/v1/unblock-requests", Action.UNBLOCK_REQUEST, request_unblock,
          "Request that a block be lifted (another approver confirms)", 201,
          body={"component": ("string", True), "version": ("string", True), "reason": ("string", True),
                "model": ("string", False)}),
    Route("POST", "/api/v1/unblock-requests/confirm", Action.UNBLOCK_CONFIRM, confirm_unblock,
          "Confirm a pending unblock request: the block is lifted",
          body={"component": ("string", True), "version": ("string", True), "reason": ("string", False),
                "model": ("string", False)}),
    Route("GET", "/api/v1/status", V, site_status, "Each node against its release (stored reads; refresh=true "
          "reads every BMC)", query={"environment": "string", "refresh": "boolean"}),
    Route("GET", "/api/v1/nodes", V, list_nodes, "Nodes as stored", query={"environment": "string"}),
    Route("GET", "/api/v1/nodes/<name>", V, show_node, "One node: state, firmware observed vs pinned, last events "
          "and rollout steps"),
    Route("POST", "/api/v1/nodes/<name>/maintenance", Action.APPLY, node_maintenance,
          "Take a node out of rollouts (on) or give it back (off)", body={"on": ("boolean", True),
                                                                          "reason": ("string", True)}),
    Route("POST", "/api/v1/nodes/<name>/clear", Action.APPLY, clear_node,
          "A failed or held node back to ready, after a BMC read now", body={"reason": ("string", True)}),
    Route("GET", "/api/v1/drift", V, drift_report, "Nodes whose BMC reports other firmware than pinned",
          query={"environment": "string"}),
    Route("GET", "/api/v1/history", V, change_history, "Changes in order", query={"limit": "integer"}),
    Route("GET", "/api/v1/audit", V, audit_log, "The audit log's last entries", query={"limit": "integer"}),
    Route("GET", "/api/v1/audit/verify", V, audit_verify, "Verify the audit chain"),
    Route("GET", "/api/v1/accounts", Action.MANAGE_USERS, list_accounts, "Accounts"),
    Route("POST", "/api/v1/accounts", Action.MANAGE_USERS, add_account, "Add an account", 201,
          body={"username": ("string", True), "role": ("string", True), "password": ("string", False)}),
    Route("POST", "/api/v1/accounts/<name>/disable", Action.MANAGE_USERS, disable_account,
          "Disable an account: no sign-in, tokens revoked, approvals stop counting", body={"reason": ("string", False)}),
    Route("POST", "/api/v1/accounts/<name>/tokens", Action.MANAGE_USERS, create_token_for,
          "A personal API token for an account (shown once)", 201,
          body={"name": ("string", True), "days": ("number", False)}),
    Route("GET", "/api/v1/tokens", Action.MANAGE_USERS, list_tokens, "API tokens (never their secret)",
          query={"user": "string"}),
    Route("DELETE", "/api/v1/tokens/<int:tid>", Action.MANAGE_USERS, revoke_token, "Revoke an API token"),
]
