"""Waiting for nodes' reports: one poller of the store's callback events for every node a rollout waits on
(woken by NOTIFY on PostgreSQL, whichever boot server took the report; a poll on SQLite)."""

from __future__ import annotations

import logging
import queue
import threading

from provisioner.rollout import notify
from provisioner.rollout.record import RolloutRecord

log = logging.getLogger("provisioner.rollout")


class CallbackWatch:
    """One poller for every node waiting on a report (not one query per waiting node per tick)."""

    def __init__(self, record: RolloutRecord, poll: float):
        self.record, self.poll = record, poll
        self._inboxes: dict[str, tuple[queue.Queue, int]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._marker = 0

    def subscribe(self, node: str) -> queue.Queue:
        since = self.record.last_event_seq()  # only reports after this moment count
        inbox: queue.Queue = queue.Queue()
        with self._lock:
            self._inboxes[node] = (inbox, since)
            if self._thread is None:
                self._marker = since
                self._thread = threading.Thread(target=self._run, name="callback-watch", daemon=True)
                self._thread.start()
        return inbox

    def unsubscribe(self, node: str) -> None:
        with self._lock:
            self._inboxes.pop(node, None)

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._inboxes:
                    self._thread = None
                    return
            seen = notify.generation(self.record.store)  # a report after this wakes the wait below
            try:
                for seq, node, event, details in self.record.callbacks_after(self._marker):
                    self._marker = seq
                    with self._lock:
                        inbox, since = self._inboxes.get(node, (None, 0))
                    if inbox is not None and seq > since:
                        inbox.put((event, details))
            except Exception:  # a store hiccup must not strand the waiters; try again next tick
                log.exception("rollout.callback_watch")
            notify.wait(self.record.store, seen, self.poll)  # LISTEN/NOTIFY on PostgreSQL, a poll on SQLite
