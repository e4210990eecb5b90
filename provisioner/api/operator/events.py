"""A rollout's live event stream: Server-Sent Events (WHATWG HTML §9.2) read from the store.

Each begin/end of a node's step is one event (`event: step`), its `id` the step's position in
the rollout's record, so a client that reconnects with `Last-Event-ID` gets exactly the steps
after it. The stream polls the store (SQLite has no notifications) and ends with `event: end`
once the rollout is no longer running; a comment line every `KEEPALIVE` seconds keeps proxies
from closing an idle stream.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

from provisioner.context import Context
from provisioner.errors import ReleaseError
from provisioner.rollout.record import RolloutRecord

KEEPALIVE = 15.0


def _event(kind: str, data: dict, event_id: int | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {kind}\ndata: {json.dumps(data, default=str)}\n\n"


def last_event_id(header: str | None) -> int:
    try:
        return max(0, int((header or "0").strip()))
    except ValueError:
        return 0


def rollout_events(ctx: Context, rid: int, after: int = 0, poll: float = 0.5) -> Iterator[str]:
    record = RolloutRecord(ctx.store)
    if record.rollout(rid) is None:
        raise ReleaseError(f"no rollout {rid}; GET /api/v1/rollouts lists them")

    def stream() -> Iterator[str]:
        seen, quiet_since = after, time.monotonic()
        yield "retry: 2000\n\n"  # reconnect after 2 s, with Last-Event-ID
        while True:
            r = record.rollout(rid)
            steps = record.steps(rid)
            for i, s in enumerate(steps[seen:], start=seen + 1):
                yield _event("step", {"node": s["node"], "step": s["step"], "phase": s["phase"],
                                      "at": s["at"].isoformat(), "error": (s["details"] or {}).get("error")}, i)
                seen, quiet_since = i, time.monotonic()
            if r.status != "running":
                yield _event("end", {"rollout": rid, "status": r.status, "reason": r.reason})
                return
            if time.monotonic() - quiet_since > KEEPALIVE:
                yield ": keep-alive\n\n"
                quiet_since = time.monotonic()
            time.sleep(poll)

    return stream()
