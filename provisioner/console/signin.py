"""Signing in to the console (a password, or OpenID Connect when configured) and signing out.

A failed sign-in says one line that never tells whether the name exists, and is logged with
the client address. OIDC's pending login (state, nonce, PKCE verifier, where to go next) travels
in a short-lived `SameSite=Lax` cookie (Lax: it comes back on the provider's top-level redirect),
encrypted and authenticated with a key derived from the console's key (Fernet: AES-CBC and
HMAC-SHA256; the browser can neither read the verifier nor forge a pending login) and valid for
ten minutes. So a callback link sent to someone else cannot sign them in as another person, and
any of `provisioner api --processes N`'s processes can finish a sign-in another one began.

The callback answers with a page that moves on by itself (a meta refresh, no script): a
`SameSite=Strict` session cookie set at the end of a redirect chain that began at the provider
would not be sent on the chain's next hop.
"""

from __future__ import annotations

import hmac

from flask import Blueprint, current_app, g, redirect, render_template, request, url_for

from provisioner.auth.oidc import OidcLogin, PendingLogin
from provisioner.console import cfg, data, refuse
from provisioner.errors import NotAuthenticated

PENDING_SECONDS = 600
BINDING_COOKIE = "console-oidc"


def _safe_next(target: str | None) -> str:
    """Only a path inside the console: never an open redirect to another site."""
    if target and target.startswith("/console") and not target.startswith("//") and "\\" not in target:
        return target
    return url_for("console.dashboard")


def _start(actor, method: str, target: str | None):
    g.session = g.codec.begin(actor.account.id, method)
    g.actor = actor
    current_app.logger.info("console.signin account=%s method=%s client=%s", actor.name, method, request.remote_addr)
    if method == "oidc":
        response = current_app.make_response(render_template("console/signed_in.html", target=_safe_next(target)))
        response.delete_cookie(BINDING_COOKIE, path="/console/oidc", secure=g.codec.policy.secure, samesite="Lax")
        return response
    return redirect(_safe_next(target), 303)


def register(bp: Blueprint) -> None:
    login_cache: list[OidcLogin] = []

    def oidc() -> OidcLogin | None:
        c = cfg()
        if c.oidc is None:
            return None
        if not login_cache:
            login_cache.append(OidcLogin(c.oidc, c.ctx.store.accounts))
        return login_cache[0]

    @bp.route("/login", methods=["GET", "POST"])
    def login():
        target = request.values.get("next")
        if request.method == "GET":
            # a Secure cookie sent over plain HTTP is dropped by the browser: say so instead of looping
            plain = cfg().policy.secure and not request.is_secure
            return render_template("console/login.html", next=target, oidc=cfg().oidc is not None,
                                   error="this console signs in over HTTPS only (its session cookie is Secure): "
                                         "start the server with --tls-cert and --tls-key" if plain else None)
        try:
            actor = data.sign_in(cfg().ctx, request.form.get("username", ""), request.form.get("password", ""),
                                 client=request.remote_addr or "?")
        except NotAuthenticated as e:
            current_app.logger.info("console.signin.refused client=%s why=%s", request.remote_addr, e)
            return render_template("console/login.html", next=target, oidc=cfg().oidc is not None,
                                   error=str(e), username=request.form.get("username", "")), 401
        return _start(actor, "password", target)

    @bp.post("/logout")
    def logout():
        g.session = g.codec.load(None)[0]
        g.session.say("info", "signed out")
        return redirect(url_for("console.login"), 303)

    @bp.get("/login/oidc")
    def oidc_begin():
        login = oidc()
        if login is None:
            return refuse(404, "single sign-on is not configured on this server")
        try:
            p = login.begin()
        except NotAuthenticated as e:
            return refuse(502, str(e))
        sealed = g.codec.seal_pending({"state": p.state, "nonce": p.nonce, "verifier": p.code_verifier,
                                       "next": request.args.get("next") or ""})
        response = redirect(p.url, 303)
        response.set_cookie(BINDING_COOKIE, sealed, max_age=PENDING_SECONDS, httponly=True,
                            secure=g.codec.policy.secure, samesite="Lax", path="/console/oidc")
        return response

    @bp.get("/oidc/callback")
    def oidc_callback():
        login = oidc()
        found = g.codec.open_pending(request.cookies.get(BINDING_COOKIE, ""), PENDING_SECONDS)
        if (login is None or found is None
                or not hmac.compare_digest(str(found.get("state", "")), request.args.get("state", ""))):
            return refuse(401, "this sign-in link is unknown, expired or was begun in another browser; sign in again")
        pending = PendingLogin("", found["state"], found["nonce"], found["verifier"])
        try:
            actor = login.complete(pending, request.url, client=request.remote_addr or "?")
        except NotAuthenticated as e:
            return refuse(401, str(e))
        return _start(actor, "oidc", found["next"])
