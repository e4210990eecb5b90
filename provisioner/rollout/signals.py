"""Stopping a rollout by signal: the first SIGINT/SIGTERM drains, the second stops at once.

First: the engine starts nothing new, running steps reach their end (bounded by their own
timeouts), and the rollout is recorded `interrupted` (resumable by `apply`); the command exits
130. Second: the rollout is recorded `interrupted` at once (its running nodes stay `running`, as
after a kill -9, and are picked up on resume), the leases are let go, and the process exits 130.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable

log = logging.getLogger("provisioner.rollout")

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it


class SignalStop:
    """`with SignalStop(say) as stop: rollouts.apply(..., on_engine=stop.attach)`."""

    def __init__(self, say: Callable[[str], None]):
        self.say = say
        self.engine = None
        self.rid: int | None = None
        self.count = 0
        self._previous: dict[int, object] = {}

    def attach(self, engine, rid: int) -> None:
        self.engine, self.rid = engine, rid

    def __enter__(self) -> SignalStop:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, _frame) -> None:
        self.count += 1
        name = signal.Signals(signum).name
        if self.engine is None:  # still planning: nothing was started, nothing to record
            raise KeyboardInterrupt
        if self.count == 1:
            log.warning("rollout.interrupt rollout=%s signal=%s", self.rid, name)
            self.say(f"{name}: rollout {self.rid}: starting nothing new; running steps end within their "
                     f"timeouts, then it is recorded interrupted (resumable). {name} again stops at once.")
            self.engine.interrupt()
            return
        self.say(f"{name} again: rollout {self.rid} stops now, recorded interrupted; `provisioner apply` resumes it")
        # Record from a thread of its own: the signal may have come while this (main) thread was
        # inside a store transaction, and the handler must not wait on itself.
        t = threading.Thread(target=self._record_now, daemon=True)
        t.start()
        t.join(10)
        os._exit(EXIT_INTERRUPTED)

    def _record_now(self) -> None:
        engine = self.engine
        try:
            engine.record.finish(self.rid, "interrupt", "stopped at once by a second signal; "
                                 "nodes mid-step are picked up on resume", engine.actor)
        except Exception:  # e.g. the lease was already lost: nothing of ours to record
            log.exception("rollout.interrupt_record_failed rollout=%s", self.rid)
        if engine.leases is not None:
            engine.leases.release_all()
