"""Rollouts started by API calls, run in this process's threads: the call returns once the rollout exists.

`start(run)` runs `run(progress)` (an operation that creates or resumes a rollout, then drives it)
in a worker thread and returns the rollout's id as soon as the operation says it has one, so
`POST .../rollouts` answers 202 with the id while the canary is still flashing. An error before
the rollout exists (busy, halted, blocked...) is raised to the caller, so the API answers it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

log = logging.getLogger("provisioner.api.rollouts")


class RolloutWorkers:
    def __init__(self, workers: int = 4):
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="api-rollout")
        self.running: dict[int, Future] = {}
        self.engines: dict[int, object] = {}
        self.started: dict[int, dict] = {}  # rollout -> its first event (created: counts, unread BMCs; or resume)

    def attach(self, engine, rid: int) -> None:
        """on_engine: keep the engine, so that stopping the server interrupts it (resumable)."""
        self.engines[rid] = engine

    def start(self, run: Callable[[Callable[[dict], None], Callable], object]) -> int:
        known = threading.Event()
        box: dict = {}

        def progress(e: dict) -> None:
            if e.get("event") in ("created", "resume") and "rollout" not in box:
                box["rollout"] = e["rollout"]
                self.started[e["rollout"]] = dict(e)
                known.set()

        def job():
            try:
                return run(progress, self.attach)
            except BaseException as e:  # noqa: BLE001 - handed to the caller, or logged once
                if "rollout" in box:
                    log.error("api.rollout.error rollout=%s error=%s", box["rollout"], e)
                box.setdefault("error", e)
                raise
            finally:
                known.set()

        future = self.pool.submit(job)
        known.wait()
        if "rollout" in box:
            self.running[box["rollout"]] = future
            return box["rollout"]
        if "error" in box:
            raise box["error"]
        return future.result().rollout  # finished without a progress event

    def shutdown(self, wait: bool = True) -> None:
        """Stop: every running rollout drains its in-flight steps and is recorded interrupted, as on
        SIGTERM in the CLI (rollout/signals.py); `apply` (or POST .../rollouts) resumes it."""
        for rid, future in list(self.running.items()):
            engine = self.engines.get(rid)
            if engine is not None and not future.done():
                log.warning("api.rollout.interrupt rollout=%s (the server stops)", rid)
                engine.interrupt()
        self.pool.shutdown(wait=wait)
