"""The console's pages: dashboard, releases (the gate, approve and withdraw), blocks, nodes, audit."""

from __future__ import annotations

from flask import Blueprint, g, render_template, request, url_for

from provisioner.console import acted, back, cfg, data
from provisioner.errors import InputError, PolicyViolation


def _form(name: str, *, required: bool = False, limit: int = 2000) -> str:
    value = (request.form.get(name) or "").strip()
    if required and not value:
        raise InputError(f"the {name} cannot be empty")
    if len(value) > limit:
        raise InputError(f"the {name} is longer than {limit} characters")
    return value


def register(bp: Blueprint) -> None:
    @bp.get("/")
    def dashboard():
        return render_template("console/dashboard.html", d=data.dashboard(cfg().ctx),
                               rollouts=data.rollouts(cfg().ctx, limit=8))

    # -- releases and the staging gate ------------------------------------------------------------
    @bp.get("/releases")
    def releases():
        return render_template("console/releases.html", releases=data.releases(cfg().ctx)[::-1])

    @bp.get("/releases/<ref>")
    def release(ref: str):
        r = data.release_page(cfg().ctx, ref)
        mine = any(a["account_id"] == g.actor.account.id for a in r["approvals"])
        return render_template("console/release.html", r=r, mine=mine)

    @bp.post("/releases/<ref>/approve")
    def approve(ref: str):
        ctx = cfg().ctx
        rid = ctx.store.resolve_release_id(ref)
        if request.form.get("withdraw"):
            acted(lambda: data.withdraw(ctx, g.actor, rid, _form("comment")) or _refused(
                f"{g.actor.name} has no approval of this release to withdraw"), ok="approval withdrawn")
        else:
            acted(lambda: data.approve(ctx, g.actor, rid, _form("comment")) or _refused(
                f"{g.actor.name} has approved this release already; an approval counts once"),
                  ok=f"approved by {g.actor.name}")
        return back(url_for("console.release", ref=rid))

    # -- blocks -------------------------------------------------------------------------------------
    @bp.get("/blocks")
    def blocks():
        return render_template("console/blocks.html", blocks=data.blocks(cfg().ctx)["active"])

    @bp.post("/blocks")
    def add_block():
        ctx = cfg().ctx
        acted(lambda: data.block(ctx, g.actor, _form("component", required=True, limit=32),
                                 _form("version", required=True, limit=64), _form("reason", required=True),
                                 _form("incident", limit=64), _form("model", limit=64) or None),
              ok="blocked {result[component]} {result[version]}: running rollouts pinning it halt at their next "
                 "step ({result[rollouts_halting]}); nodes held: {result[marked]}")
        return back(url_for("console.blocks"))

    @bp.post("/blocks/unblock")
    def unblock():
        ctx = cfg().ctx
        component, version = _form("component", required=True), _form("version", required=True)
        if request.form.get("step") == "confirm":
            acted(lambda: data.confirm_unblock(ctx, g.actor, component, version),
                  ok=f"unblocked {component} {version}; nodes released: {{result[released]}}")
        else:
            acted(lambda: data.request_unblock(ctx, g.actor, component, version, _form("reason", required=True)),
                  ok=f"unblock of {component} {version} requested: another approver must confirm it")
        return back(url_for("console.blocks"))

    # -- nodes and audit ----------------------------------------------------------------------------
    @bp.get("/nodes")
    def nodes():
        env = request.args.get("environment") or None
        rows = data.nodes(cfg().ctx, env)
        return render_template("console/nodes.html", nodes=rows, environment=env,
                               environments=list(cfg().ctx.spec.policy.environments))

    @bp.get("/nodes/<name>")
    def node(name: str):
        return render_template("console/node.html", n=data.node(cfg().ctx, name))

    @bp.get("/audit")
    def audit():
        limit = min(max(int(request.args.get("limit", 200) or 200), 1), 5000)
        return render_template("console/audit.html", entries=data.audit_log(cfg().ctx, limit),
                               verdict=data.verify_audit(cfg().ctx), limit=limit)


def _refused(why: str):
    raise PolicyViolation(why)
