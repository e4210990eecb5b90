"""The web console: a Flask blueprint for approvers and on-call, mounted at /console.

Server-rendered pages (Jinja2, autoescaped) and the static files they use, served by the blueprint
itself (no CDN, no inline script or style: see session.CSP). Every page needs a signed-in account;
every POST needs the session's CSRF token; every action goes through data.py, as the signed-in
account, authorised by the same matrix as the CLI.

    pages.py       dashboard, releases (gate, approve), blocks, nodes, audit
    live.py        the rollout page and its server-sent events; resume, abort
    signin.py      sign in with a password or OpenID Connect, sign out
    session.py     the signed session cookie, idle timeout, CSRF token, security headers
    data.py        the one door to the operations and the store
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from flask import Blueprint, current_app, g, redirect, render_template, request, url_for

from provisioner.auth.oidc import OidcClient
from provisioner.console import data
from provisioner.console.session import SessionCodec, SessionPolicy, security_headers, session_key
from provisioner.context import Context
from provisioner.errors import ProvisionerError
from provisioner.policy.authz import Action

PUBLIC = {"console.static", "console.login", "console.oidc_begin", "console.oidc_callback"}
QUIET = {"console.rollout_events"}  # a live stream is not activity: it does not keep a session alive


@dataclass
class ConsoleConfig:
    """What the console is given: the context (store, spec), session rules, SSO, how often to look."""

    ctx: Context
    policy: SessionPolicy
    oidc: OidcClient | None = None
    poll_seconds: float = 0.5         # how often a live rollout stream looks at the store
    stream_seconds: float = 300.0     # a stream ends after this; EventSource reconnects with Last-Event-ID
    closing: threading.Event = field(default_factory=threading.Event)  # set: open streams end now


def console_blueprint(ctx: Context, *, policy: SessionPolicy | None = None, oidc: OidcClient | None = None,
                      poll_seconds: float = 0.5, stream_seconds: float = 300.0, key: bytes | None = None) -> Blueprint:
    """The console for the store and spec of `ctx`, to register on an app (url prefix /console)."""
    cfg = ConsoleConfig(ctx, policy or SessionPolicy(), oidc, poll_seconds, stream_seconds)
    codec = SessionCodec(key or session_key(ctx.settings.data_dir), cfg.policy)
    bp = Blueprint("console", __name__, url_prefix="/console", template_folder="templates",
                   static_folder="static", static_url_path="/static")
    bp.console = cfg  # for the views: current_app's blueprint is looked up by name

    @bp.before_request
    def load_session():
        g.console_cfg, g.codec = cfg, codec
        s, why = codec.load(request.cookies.get(codec.cookie))
        g.session, g.actor = s, None
        if why:
            s.say("info", why)
        if s.signed_in:
            g.actor = data.actor_for(ctx, s.account_id, s.method, client=request.remote_addr or "?")
            if g.actor is None:
                g.session = s = codec.load(None)[0]
                s.say("error", "your account is disabled or gone: signed out")
        if request.method == "POST" and not s.csrf_ok(request.form.get("csrf_token")
                                                      or request.headers.get("X-CSRF-Token")):
            return refuse(403, "This form has no valid CSRF token (stale, or sent from elsewhere): nothing was done. "
                               "Reload the page and try again.")
        if request.endpoint in PUBLIC:
            return None
        if g.actor is None:
            if request.endpoint in QUIET:
                return refuse(401, "signed out")
            return redirect(url_for("console.login", next=request.full_path.rstrip("?")))
        if request.endpoint not in QUIET:
            s.seen, s.changed = time.time(), True
        return None

    @bp.after_request
    def save_session(response):
        security_headers(response)
        s = g.get("session")
        if s is not None and s.changed:
            codec.set_cookie(response, s)
        return response

    @bp.errorhandler(ProvisionerError)
    def provisioner_error(e: ProvisionerError):
        return refuse(e.http_status, str(e))

    def may(action: str) -> bool:
        return g.get("actor") is not None and data.may(g.actor, Action(action))

    @bp.context_processor
    def common():
        s = g.get("session")
        return {"actor": g.get("actor"), "csrf_token": s.csrf if s else "", "may": may,
                "flashes": s.take_flash() if s else [], "now": time.strftime("%H:%M:%S UTC", time.gmtime())}

    from provisioner.console import live, pages, signin

    pages.register(bp)
    live.register(bp)
    signin.register(bp)
    return bp


def refuse(status: int, message: str):
    return render_template("console/error.html", status=status, message=message), status


def cfg() -> ConsoleConfig:
    return g.console_cfg


def back(default: str):
    """Where to go after a POST: the page it came from (same origin only), else `default`."""
    ref = request.referrer or ""
    parts = urlsplit(ref)
    if ref and parts.netloc == request.host and parts.path.startswith("/console"):
        return redirect(parts.path + (f"?{parts.query}" if parts.query else ""), 303)
    return redirect(default, 303)


def acted(fn, ok: str | None = None) -> bool:
    """Run an action; say what happened (or the one-line refusal) on the next page. True if it ran."""
    try:
        result = fn()
    except ProvisionerError as e:
        g.session.say("error", str(e))
        current_app.logger.info("console.refused actor=%s error=%s", g.actor, e)
        return False
    if ok:
        g.session.say("ok", ok.format(result=result))
    return True
