"""The HTTP side of the boot services (Flask app factory): iPXE scripts, artifacts, callbacks.

Routes (unauthenticated: nodes on the provisioning network call them, see the README's security model)
    GET  /boot/<mac>.ipxe                 per-node iPXE script from the netboot gate
    GET  /boot.ipxe?mac=<mac>             the same, for firmware that passes the MAC as a query
    GET  /artifacts/sha256/<hex>          an artifact by digest, verified at every read, Range per RFC 9110 §14
    GET  /flasher/<node>.json?token=...   the flasher's config: each image's URL and sha256
    GET|POST /api/v1/callback/<node>[/<event>]  a report of the node's current boot (its token required)
    GET  /healthz                         liveness

Every error, ours (`ProvisionerError.http_status`) or Werkzeug's, is answered by one handler with
a problem+json body (RFC 9457); an unexpected exception is logged once and is a plain 500.
"""

from __future__ import annotations

import logging
import os

from flask import Flask, Response, jsonify, request

from provisioner.api.problems import problem_handler
from provisioner.api.ranges import UNSATISFIABLE, byte_range
from provisioner.api.reports import json_body, parse_report
from provisioner.errors import ArtifactMismatch, ArtifactMissing, BadRequest, NetbootError
from provisioner.netboot.service import BootService
from provisioner.observability import metrics

log = logging.getLogger("provisioner.http")
IPXE = "text/plain; charset=utf-8"  # given as content_type: Flask adds no second charset
CHUNK = 256 * 1024


def create_app(service: BootService) -> Flask:
    app = Flask("provisioner")
    metrics.instrument_flask(app)
    app.config["MAX_CONTENT_LENGTH"] = service.limits.body_bytes  # Werkzeug answers 413 past it

    @app.get("/healthz")
    def healthz():
        return jsonify(ok=True)

    def script(mac: str, kind: str = "ipxe"):
        try:
            return Response(service.boot_config(mac, kind), content_type=IPXE)
        except NetbootError as e:  # the release's template cannot be rendered: tell the console why
            log.error("http.render_error mac=%s error=%s", mac[:40], e)
            return Response(f"#!ipxe\necho provisioner: {e}\nexit 1\n", status=e.http_status, content_type=IPXE)

    @app.get("/boot/<mac>.ipxe")
    def boot_by_path(mac: str):
        return script(mac)

    @app.get("/boot.ipxe")
    def boot_by_query():
        mac = request.args.get("mac")
        if not mac:
            return Response(service.bootstrap_ipxe(), content_type=IPXE)
        return script(mac)

    @app.get("/artifacts/sha256/<digest>")
    def artifact(digest: str):
        try:
            f, size = service.artifacts.open_verified(digest)
        except (ArtifactMissing, ArtifactMismatch) as e:
            service.artifact_unavailable(digest, e)
            raise
        etag = f'"{digest}"'
        headers = {"ETag": etag, "Accept-Ranges": "bytes",
                   "Cache-Control": "public, max-age=31536000, immutable"}  # content-addressed
        if etag in [t.strip().removeprefix("W/") for t in request.headers.get("If-None-Match", "").split(",")]:
            f.close()
            return Response(status=304, headers=headers)
        span = byte_range(request.headers.get("Range"), size, request.headers.get("If-Range"), etag)
        if span == UNSATISFIABLE:
            f.close()
            return Response(status=416, headers={**headers, "Content-Range": f"bytes */{size}"})  # §15.5.17
        first, last, status = (0, size - 1, 200) if span is None else (*span, 206)
        if status == 206:
            headers["Content-Range"] = f"bytes {first}-{last}/{size}"
        headers["Content-Length"] = str(last - first + 1)

        def stream():
            pos = first
            while pos <= last:
                chunk = os.pread(f.fileno(), min(CHUNK, last + 1 - pos), pos)
                if not chunk:
                    return
                pos += len(chunk)
                yield chunk

        resp = Response(stream(), status=status, headers=headers, content_type="application/octet-stream")
        resp.call_on_close(f.close)
        return resp

    @app.get("/flasher/<node>.json")
    def flasher(node: str):
        return Response(service.flasher_config(node, request.args.get("token", "")), content_type="application/json")

    @app.route("/api/v1/callback/<node>", methods=["GET", "POST"])
    @app.route("/api/v1/callback/<node>/<event>", methods=["GET", "POST"])
    def callback(node: str, event: str = ""):
        body = json_body(request.get_data(cache=False), service.limits)
        named = body.get("event")
        if named is not None and not isinstance(named, str):
            raise BadRequest(f"event must be a string, not {type(named).__name__}")
        if event and named and named != event:
            raise BadRequest(f"the path says {event[:32]!r} and the body says {named[:32]!r}")
        event = event or named or request.args.get("event", "")
        scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
        token = credentials.strip() if scheme.lower() == "bearer" else request.args.get("token", "")
        return jsonify(service.callback(node, token, event, lambda: parse_report(event, body)))

    app.register_error_handler(Exception, problem_handler(log, "http", "boot server"))

    return app
