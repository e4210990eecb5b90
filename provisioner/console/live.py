"""The live rollout page: waves, nodes, steps, halt reason, resume and abort, updated by server-sent events.

One stream per open page (not a poll per node): the server looks at the store every
`poll_seconds` for steps after the last one sent (one indexed query, whatever the rollout's
size) and sends each as an event whose id is the step's sequence number. A browser that lost
the stream reconnects with `Last-Event-ID` (WHATWG HTML §9.2, server-sent events) and gets what
it missed, nothing twice.
"""

from __future__ import annotations

import json
import time

from flask import Blueprint, Response, g, render_template, request, url_for

from provisioner.console import acted, back, cfg, data
from provisioner.states import UNFINISHED

HEARTBEAT = 15.0  # seconds between comments on an idle stream, so proxies keep it open
STEPS_PER_LOOK = 500


def event(kind: str, payload: dict, seq: int | None = None) -> str:
    """One server-sent event; JSON has no raw newlines, so `data:` is one line."""
    head = f"id: {seq}\n" if seq is not None else ""
    return f"{head}event: {kind}\ndata: {json.dumps(payload, separators=(',', ':'), default=str)}\n\n"


def stream(ctx, rid: int, after: int, poll: float, lifetime: float, closing=None):
    """The rollout's events after step `after`, until it is finished, `lifetime` has passed or the
    server is `closing`."""
    yield "retry: 2000\n\n"
    status = reason = None
    ends, beat = time.monotonic() + lifetime, time.monotonic()
    while True:
        ch = data.rollout_changes(ctx, rid, after, STEPS_PER_LOOK)
        for s in ch["steps"]:
            after = s["seq"]
            yield event("step", {**s, "row": ch["nodes"].get(s["node"])}, after)
        if ch["steps"] or (ch["status"], ch["reason"]) != (status, reason):
            nodes, counts = data.rollout_node_statuses(ctx, rid)
            changed = status is not None and ch["status"] != status
            yield event("rollout", {"status": ch["status"], "reason": ch["reason"], "counts": counts,
                                    "nodes": nodes if changed else {}}, after)
            status, reason, beat = ch["status"], ch["reason"], time.monotonic()
        if status not in UNFINISHED:
            yield event("end", {"status": status}, after)
            return
        if len(ch["steps"]) == STEPS_PER_LOOK:
            continue  # more waiting: no sleep
        if time.monotonic() >= ends or (closing is not None and closing.is_set()):
            return  # the browser reconnects with Last-Event-ID
        if time.monotonic() - beat >= HEARTBEAT:
            yield ": keep-alive\n\n"
            beat = time.monotonic()
        time.sleep(poll)


def register(bp: Blueprint) -> None:
    @bp.get("/rollouts")
    def rollouts():
        return render_template("console/rollouts.html", rollouts=data.rollouts(cfg().ctx, limit=200))

    @bp.get("/rollouts/<int:rid>")
    def rollout(rid: int):
        return render_template("console/rollout.html", r=data.rollout(cfg().ctx, rid),
                               unfinished=[str(u) for u in UNFINISHED])

    @bp.get("/rollouts/<int:rid>/events")
    def rollout_events(rid: int):
        raw = request.headers.get("Last-Event-ID") or request.args.get("after") or "0"
        after = int(raw) if raw.isdigit() else 0
        c = cfg()
        data.rollout_changes(c.ctx, rid, after, 1)  # an unknown rollout is a 404 now, not an empty stream
        return Response(stream(c.ctx, rid, after, c.poll_seconds, c.stream_seconds, c.closing),
                        mimetype="text/event-stream",
                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @bp.post("/rollouts/<int:rid>/resume")
    def resume(rid: int):
        reason = (request.form.get("reason") or "").strip()
        acted(lambda: data.resume(cfg().ctx, g.actor, rid, reason), ok=f"rollout {rid} resumed: {reason}")
        return back(url_for("console.rollout", rid=rid))

    @bp.post("/rollouts/<int:rid>/abort")
    def abort(rid: int):
        reason = (request.form.get("reason") or "").strip()
        acted(lambda: data.abort(cfg().ctx, g.actor, rid, reason), ok=f"rollout {rid} aborted: {reason}")
        return back(url_for("console.rollout", rid=rid))
