"""The HTTP side of the boot services (Flask app factory): iPXE scripts, artifacts, callbacks.

Routes
    GET  /boot/<mac>.ipxe                 per-node iPXE script from the netboot gate
    GET  /boot.ipxe?mac=<mac>             the same, for firmware that passes the MAC as a query
    GET  /artifacts/sha256/<hex>          an artifact by digest, with HTTP Range support
    GET  /flasher/<node>.json?token=...   the flasher's config: each image's URL and sha256
    GET|POST /api/v1/callback/<node>[/<event>]  progress and results from a booting node (token required)
    GET  /healthz                         liveness
"""

from __future__ import annotations

import logging

from flask import Flask, Response, abort, jsonify, request, send_file

from provisioner.errors import NetbootError, PolicyViolation, ReleaseError
from provisioner.netboot.service import BootService
from provisioner.observability import metrics

log = logging.getLogger("provisioner.http")
IPXE = "text/plain; charset=utf-8"


def create_app(service: BootService) -> Flask:
    app = Flask("provisioner")
    metrics.instrument_flask(app)
    verified: set[str] = set()

    @app.get("/healthz")
    def healthz():
        return jsonify(ok=True)

    def script(mac: str, kind: str = "ipxe"):
        try:
            return Response(service.boot_config(mac, kind), mimetype=IPXE)
        except NetbootError as e:
            if "not a MAC" in str(e):
                abort(400, str(e))
            log.error("http.render_error mac=%s error=%s", mac, e)
            return Response(f"#!ipxe\necho provisioner: {e}\nexit 1\n", status=500, mimetype=IPXE)

    @app.get("/boot/<mac>.ipxe")
    def boot_by_path(mac: str):
        return script(mac)

    @app.get("/boot.ipxe")
    def boot_by_query():
        mac = request.args.get("mac")
        if not mac:
            return Response(service.bootstrap_ipxe(), mimetype=IPXE)
        return script(mac)

    @app.get("/artifacts/sha256/<digest>")
    def artifact(digest: str):
        try:
            path = service.artifacts.path(digest)
            if digest not in verified:
                service.artifacts.verify(digest)  # a tampered artifact is never served
                verified.add(digest)
        except ReleaseError as e:
            abort(404, str(e))
        return send_file(path, mimetype="application/octet-stream", conditional=True, etag=digest,
                         max_age=31536000)  # content-addressed: cacheable forever

    @app.get("/flasher/<node>.json")
    def flasher(node: str):
        token = request.args.get("token", "")
        try:
            return Response(service.flasher_config(node, token), mimetype="application/json")
        except PolicyViolation as e:
            abort(403, str(e))

    @app.route("/api/v1/callback/<node>", methods=["GET", "POST"])
    @app.route("/api/v1/callback/<node>/<event>", methods=["GET", "POST"])
    def callback(node: str, event: str = ""):
        body = request.get_json(silent=True) or {}
        auth = request.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ").strip() if auth.startswith("Bearer ") else request.args.get("token", "")
        event = event or body.get("event") or request.args.get("event", "")
        try:
            return jsonify(service.callback(node, token, event, body))
        except PolicyViolation as e:
            return jsonify(ok=False, error=str(e)), 403
        except NetbootError as e:
            return jsonify(ok=False, error=str(e)), 400

    @app.errorhandler(400)
    @app.errorhandler(403)
    @app.errorhandler(404)
    def plain_error(e):
        return jsonify(ok=False, error=e.description), e.code

    return app
