"""The operator API (`provisioner api`): JSON under /api/v1 for every operator command.

Separate from the boot routes (provisioner/api/app.py, unauthenticated, for nodes): its own app
and port. Every route of the table (routes.py) is authenticated (API token or session cookie,
auth.py) and authorised here, in `authorise_request`, by the matrix (policy/authz.decide) for
the route's action; the operation then applies the rules that need the case's facts (author,
gate, requester) through the same matrix. Errors are problem+json (RFC 9457) with the error
tree's `http_status`. Extra blueprints (the web console) are registered on the same app; they
authenticate their own routes with `current_app.config["AUTHENTICATE"]()` (token or session
cookie, the same as the API's) and find the deps in `current_app.config["OPERATOR_DEPS"]`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version

from flask import Flask, Response, g, jsonify, make_response, request

from provisioner.api.problems import problem_handler
from provisioner.auth.authenticate import with_password
from provisioner.context import Context
from provisioner.errors import Forbidden, InputError
from provisioner.operations.common import who_of
from provisioner.policy.authz import Facts, decide

from . import openapi
from .auth import COOKIE, SESSION_SECONDS, Sessions, authenticate, client_address, session_key
from .cache import Snapshots, TokenCache
from .routes import ROUTES, Call
from .workers import RolloutWorkers

log = logging.getLogger("provisioner.api.operator")
# The role check before a handler: the case's facts are the operation's to check (with decide too)
ROLE_ONLY = Facts(gate_passes=True, was_active_before=True)


@dataclass
class OperatorDeps:
    """What the API needs: the server's context (spec, store, artifacts, site) and its rollout workers."""

    ctx: Context
    workers: RolloutWorkers = field(default_factory=RolloutWorkers)
    secure_cookie: bool = True  # False only for plain-HTTP tests on loopback
    event_poll: float = 0.5     # seconds between two looks at a rollout's record (SSE)
    session_key: bytes | None = None
    snapshots: Snapshots = field(default_factory=Snapshots)  # status from the stored reads: <= 1 s old
    tokens: TokenCache = field(default_factory=TokenCache)   # GETs: a token's account, for 2 s


def _version() -> str:
    try:
        return version("provisioner")
    except PackageNotFoundError:
        return "0"


def create_operator_app(deps: OperatorDeps, blueprints: list | tuple = ()) -> Flask:
    app = Flask("provisioner.operator")
    app.config["MAX_CONTENT_LENGTH"] = 1 << 20
    app.json.sort_keys = False
    sessions = Sessions(deps.session_key or session_key(deps.ctx.settings.data_dir))
    by_endpoint = {r.endpoint: r for r in ROUTES}
    # for extra blueprints (the web console): the same sign-in and the same deps
    app.config["OPERATOR_DEPS"] = deps
    app.config["AUTHENTICATE"] = lambda: authenticate(request, deps.ctx.store.accounts, sessions, deps.tokens)
    doc = openapi.document(ROUTES, _version())

    @app.before_request
    def authorise_request():
        """Authentication and the matrix's role check, for every route: the one place."""
        route = by_endpoint.get(request.endpoint or "")
        if route is None:
            return None  # /healthz, the session, the OpenAPI document, a blueprint's own, or a 404
        actor = authenticate(request, deps.ctx.store.accounts, sessions, deps.tokens)
        g.actor = actor
        action = route.action_for(request, deps)
        d = decide(action, who_of(actor), ROLE_ONLY)
        if not d.allowed:
            deps.ctx.store.audit(actor, "authz.refused", request.path[:200], {"action": str(action),
                                                                             "reason": d.reason})
            raise Forbidden(d.reason)
        return None

    def bind(route):
        def view(**kwargs):
            # a GET's body has no meaning (RFC 9110 §9.3.1): not read at all
            body = {} if request.method == "GET" else request.get_json(silent=True) if request.data else {}
            if not isinstance(body, dict):
                raise InputError("the request body must be a JSON object")
            call = Call(deps.ctx.acting_as(g.actor), deps, body, request.args.to_dict())
            out = route.handler(call, **kwargs)
            if isinstance(out, Response):
                return out
            resp = jsonify(out)
            resp.status_code = route.status
            return resp
        view.__name__ = route.endpoint
        return view

    for r in ROUTES:
        app.add_url_rule(r.path, r.endpoint, bind(r), methods=[r.method])

    @app.get("/healthz")
    def healthz():
        return jsonify(ok=True)

    @app.get("/api/v1/openapi.json")
    def openapi_document():
        return jsonify(doc)

    @app.post("/api/v1/session")
    def sign_in():
        body = request.get_json(silent=True) or {}
        if not isinstance(body.get("username"), str) or not isinstance(body.get("password"), str):
            raise InputError("sign in with a JSON body {\"username\": ..., \"password\": ...}")
        actor = with_password(deps.ctx.store.accounts, body["username"], body["password"],
                              client=client_address(request))
        deps.ctx.store.audit(actor, "session.open", actor.name, {})
        resp = make_response(jsonify(actor.account.as_dict()), 201)
        resp.set_cookie(COOKIE, sessions.issue(actor), max_age=SESSION_SECONDS, path="/",
                        secure=deps.secure_cookie, httponly=True, samesite="Strict")
        return resp

    @app.delete("/api/v1/session")
    def sign_out():
        resp = make_response("", 204)
        resp.delete_cookie(COOKIE, path="/", secure=deps.secure_cookie, httponly=True, samesite="Strict")
        return resp

    for bp in blueprints:
        app.register_blueprint(bp)

    app.register_error_handler(Exception, problem_handler(log, "api", "API server", realm="provisioner",
                                                          exit_codes=True))

    return app
