"""Two short-lived caches that let many clients poll the API without each costing a full read.

`Snapshots`: a read-only answer (the status of every node from the stored BMC reads) computed at
most once per `ttl` seconds; while one thread recomputes an expired answer, the others keep
getting the previous one (stale-while-revalidate, RFC 5861 §3 in spirit), so a poller never waits
for the 1,000-node computation unless there is no recent answer (none, or one older than 10 ttl).
What is served is at most `ttl` plus one computation old. Given a `version` (a cheap read saying
whether the data changed), an expired answer is recomputed only when it did.

`TokenCache`: the account behind an API token, remembered for `ttl` seconds for safe (GET)
requests only; every write looks the token up in the store again, so a revoked token or a
disabled account can never change anything, and reads stop within `ttl`.
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
from collections.abc import Callable


class Snapshots:
    def __init__(self, ttl: float = 1.0):
        self.ttl = ttl
        self._lock = threading.Lock()
        self._values: dict[object, tuple[float, object, object]] = {}
        self._computing: set = set()
        self._first = threading.Lock()

    def get(self, key, compute: Callable[[], object], version: Callable[[], object] | None = None) -> object:
        """`compute()`'s answer, computed at most once per `ttl`; with `version` (a cheap read of
        whether the data changed), an expired answer whose version is unchanged is kept."""
        with self._lock:
            held = self._values.get(key)
            if held is not None and time.monotonic() - held[0] > self.ttl * 10:
                held = None  # idle for long: no stale answer, compute a fresh one
            if held is not None and (time.monotonic() - held[0] < self.ttl or key in self._computing):
                return held[1]
            if held is not None:
                self._computing.add(key)
        if held is not None and version is not None:
            try:
                unchanged = version() == held[2]
            except BaseException:
                with self._lock:
                    self._computing.discard(key)
                raise
            if unchanged:
                with self._lock:
                    self._values[key] = (time.monotonic(), held[1], held[2])
                    self._computing.discard(key)
                return held[1]
        if held is None:  # nothing to serve meanwhile: one request computes it, the others wait for it
            with self._first:
                with self._lock:
                    held = self._values.get(key)
                fresh = held is not None and time.monotonic() - held[0] < self.ttl
                return held[1] if fresh else self._refresh(key, compute, version)
        threading.Thread(target=self._refresh, args=(key, compute, version), name="api-snapshot", daemon=True).start()
        return held[1]

    def _refresh(self, key, compute, version=None) -> object:
        try:
            seen = version() if version is not None else None  # before: a change during compute shows next time
            value = compute()
            with self._lock:
                self._values[key] = (time.monotonic(), value, seen)
            return value
        finally:
            with self._lock:
                self._computing.discard(key)


class TokenCache:
    def __init__(self, ttl: float = 2.0, size: int = 4096):
        self.ttl, self.size = ttl, size
        self._lock = threading.Lock()
        self._accounts: dict[str, tuple[float, object]] = {}

    @staticmethod
    def _key(token: str) -> str:
        return hashlib.sha256(token.encode()).hexdigest()

    def get(self, token: str):
        with self._lock:
            held = self._accounts.get(self._key(token))
        if held is not None and time.monotonic() < held[0]:
            return held[1]
        return None

    def put(self, token: str, account) -> None:
        with self._lock:
            if len(self._accounts) >= self.size:
                self._accounts.clear()
            # each entry lives between 3/4 ttl and ttl: clients that started together do not all
            # look their tokens up again in the same instant
            self._accounts[self._key(token)] = (time.monotonic() + self.ttl * random.uniform(0.75, 1.0), account)
