"""Limits on what the provisioning network may ask of the boot server, and the per-MAC rate limit.

Defaults are listed in the README's security model; a site passes its own `Limits` to the
BootService and the HTTP app factory.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    body_bytes: int = 64 * 1024  # a callback body; a report is a few hundred bytes
    json_depth: int = 16  # nesting of objects/arrays in a body; a report needs 2
    header_bytes: int = 32 * 1024  # request line + headers, in the in-process server
    header_fields: int = 100  # as gunicorn's limit_request_fields
    script_burst: int = 30  # boot-script fetches one MAC may make at once...
    script_per_second: float = 1.0  # ...refilled at this rate (a node fetches once per boot)
    reports_per_boot: int = 500  # progress lines and the rest, per boot


class RateLimit:
    """A token bucket per key (a MAC), in this process. Bounded: a flood of made-up MACs resets
    the table rather than growing it (honest MACs lose at most one burst's worth of history)."""

    def __init__(self, burst: int, per_second: float, max_keys: int = 100_000):
        self.burst, self.rate, self.max_keys = float(burst), per_second, max_keys
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def allow(self, key: str) -> bool:
        t = time.monotonic()
        with self._lock:
            level, at = self._buckets.get(key, (self.burst, t))
            level = min(self.burst, level + (t - at) * self.rate)
            if level < 1.0:
                self._buckets[key] = (level, t)
                return False
            if len(self._buckets) >= self.max_keys and key not in self._buckets:
                self._buckets.clear()
            self._buckets[key] = (level - 1.0, t)
            return True
