"""Following a rollout the operator API runs: its event stream (SSE) turned into the progress a
local `apply` prints, and at its end the same `RolloutResult`, so the same summary and exit code.

The API answers `POST .../rollouts` with 202, the rollout's id and how it started (created, with
its counts and unreadable BMCs; or resumed); the steps then come from
`/api/v1/rollouts/<id>/events` until `event: end`, and the outcome per node from the rollout's
record (`GET /api/v1/rollouts/<id>`), as `provisioner rollout show` reads it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from provisioner.cli.remote import Remote
from provisioner.rollout.engine import RolloutResult


def follow(remote: Remote, accepted: dict, progress: Callable[[dict], None],
           on_step: Callable[[dict], None] | None = None) -> RolloutResult:
    """Print (through `progress`, RolloutProgress's events) a server's rollout until it ends; its result."""
    rid, began = accepted["rollout"], time.monotonic()
    started = accepted.get("started") or {}
    if started:
        progress(started)
    detail = remote.call("GET", f"/api/v1/rollouts/{rid}")
    fresh = started.get("event") == "created"
    todo = [n for n in detail["nodes"] if n["status"] != "held" and (fresh or n["status"] in ("pending", "running"))]
    waves: dict[int, list[str]] = {}
    for n in todo:
        waves.setdefault(n["wave"], []).append(n["node"])
    wave_of = {node: w for w, nodes in waves.items() for node in nodes}
    progress({"event": "total", "nodes": len([n for n in detail["nodes"] if n["status"] != "held"]),
              "done": len(detail["nodes"]) - len(todo) - len([n for n in detail["nodes"] if n["status"] == "held"])})
    told: set[int] = set()
    for kind, data in remote.events(f"/api/v1/rollouts/{rid}/events"):
        if kind == "end":
            break
        if kind != "step":
            continue
        if on_step:
            on_step(data)
        wave = wave_of.get(data["node"])
        if data["phase"] == "begin":
            if wave is not None and wave not in told:
                told.update(w for w in waves if w <= wave)
                progress({"event": "wave", "wave": wave, "nodes": waves[wave]})
            progress({"event": "node_step", "node": data["node"], "step": data["step"]})
    detail = remote.call("GET", f"/api/v1/rollouts/{rid}")
    rows, status = detail["nodes"], detail["status"]
    result = RolloutResult(rid, status, kind=detail["kind"], reason=detail["reason"] or "",
                           done=[n["node"] for n in rows if n["status"] == "done"],
                           failed={n["node"]: n["error"] for n in rows if n["status"] == "failed"},
                           held=[n["node"] for n in rows if n["status"] == "held"],
                           halted={n["node"]: n["step"] or "prepare" for n in rows
                                   if status in ("halted", "interrupted") and n["status"] in ("pending", "running")})
    for node, error in result.failed.items():
        progress({"event": "node_failed", "node": node, "error": error})
    result.seconds = time.monotonic() - began
    result.unread = dict(started.get("unreachable") or {})
    progress({"event": status, "reason": result.reason})
    return result
