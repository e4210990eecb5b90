"""Waking whoever waits for node callbacks: LISTEN/NOTIFY on PostgreSQL, a plain poll on SQLite.

A boot server (any `serve` instance, on any host) records a node's report and, in the same
transaction, NOTIFYs `CHANNEL` (store/boots.py; PostgreSQL delivers it at commit, never for a
rolled-back report). Each process that waits for reports keeps one LISTEN connection per store
and wakes at once; it still reads the reports from the store, so a notice lost while PostgreSQL
restarts costs at most `FALLBACK` seconds. SQLite has no notices: the waiters poll.
"""

from __future__ import annotations

import logging
import threading
import time

from provisioner.store.db import is_sqlite

log = logging.getLogger("provisioner.rollout.notify")

CHANNEL = "provisioner_callback"
FALLBACK = 1.0  # seconds: the longest wait while LISTEN works (a notice lost in a reconnect)
RECONNECT = 1.0  # seconds between attempts to LISTEN again after the server went away


class Notices:
    """One LISTEN connection and a generation counter that every notice (and every reconnect) bumps."""

    def __init__(self, url: str):
        self.url = url.replace("postgresql+psycopg://", "postgresql://", 1)
        self.generation = 0
        self.listening = False
        self._cond = threading.Condition()
        threading.Thread(target=self._run, name="callback-listen", daemon=True).start()

    def _bump(self) -> None:
        with self._cond:
            self.generation += 1
            self._cond.notify_all()

    def _run(self) -> None:
        import psycopg

        while True:
            try:
                with psycopg.connect(self.url, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.listening = True
                    self._bump()  # anything recorded while not listening: look now
                    for _ in conn.notifies():
                        self._bump()
            except Exception as e:  # the server restarted or went away: poll until it is back
                if self.listening:
                    log.warning("notify.listen_lost error=%s", str(e).splitlines()[0] if str(e) else e)
                self.listening = False
                self._bump()
                time.sleep(RECONNECT)

    def wait(self, since: int, poll: float) -> None:
        """Return once a notice came after generation `since`, or after FALLBACK (or `poll` while
        not listening)."""
        with self._cond:
            self._cond.wait_for(lambda: self.generation != since, FALLBACK if self.listening else poll)


_notices: dict[str, Notices] = {}
_lock = threading.Lock()


def notices(store) -> Notices | None:
    """The process's listener for `store`, started on first use; None for SQLite (poll)."""
    url = store.db.url
    if is_sqlite(url):
        return None
    with _lock:
        if url not in _notices:
            _notices[url] = Notices(url)
        return _notices[url]


def generation(store) -> int:
    n = notices(store)
    return n.generation if n is not None else 0


def wait(store, since: int, poll: float) -> None:
    """Sleep until the next callback may be in the store: a notice on PostgreSQL, `poll` on SQLite."""
    n = notices(store)
    if n is None:
        time.sleep(poll)
    else:
        n.wait(since, poll)
