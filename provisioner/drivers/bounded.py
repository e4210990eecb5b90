"""Running BMC calls so that none can hang the caller: one at a time per BMC, each under a deadline.

pyghmi calls block the calling thread and, before provisioner.drivers.pyghmi_fixes, could block
it forever. So every driver operation runs on a shared pool thread while the caller waits with a
deadline; if the deadline passes, the caller gets BmcTimeout (or BmcUnreachable if the BMC never
answered at all) and the stuck call is abandoned: it is told to stop at its next round trip and
its session is dropped so nothing reuses it. The per-BMC lock is process-wide, keyed by
address:port, so two driver objects for one BMC never interleave.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TypeVar

from provisioner.errors import BmcBusy, BmcTimeout, BmcUnreachable, DriverError

log = logging.getLogger(__name__)
T = TypeVar("T")

# Threads are created on demand and reused; the bound only matters if calls get stuck, and a
# stuck call is logged loudly.
POOL = ThreadPoolExecutor(max_workers=1024, thread_name_prefix="bmc-call")
_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def bmc_lock(key: str) -> threading.Lock:
    """The process-wide lock for one BMC (key "address:port")."""
    with _locks_guard:
        lock = _locks.get(key)
        if lock is None:
            lock = _locks[key] = threading.Lock()
        return lock


class Attempt:
    """Shared between the waiting caller and the pool thread running one try of an operation."""

    def __init__(self) -> None:
        self.answered = False      # the BMC answered at least once (login got past the first reply)
        self.committed = False     # a non-idempotent request was sent: do not retry
        self.cancelled = False     # the caller gave up: stop at the next round trip
        self.progress_at = time.monotonic()
        self.session = None        # whatever the driver needs to drop when abandoning

    def progressed(self) -> None:
        self.progress_at = time.monotonic()

    def check(self) -> None:
        if self.cancelled:
            raise BmcTimeout("operation abandoned by its caller")


def run(key: str, what: str, fn: Callable[[Attempt], T], *, timeout: float, retries: int, backoff: float,
        abandon: Callable[[Attempt], None], retry_safe: bool = True, stall_timeout: float | None = None,
        lock_timeout: float | None = None) -> T:
    """Run fn(attempt) for BMC `key`, holding its lock, within `timeout` seconds, with retries.

    Retryable DriverErrors are retried up to `retries` times with exponential backoff, unless the
    attempt had committed a non-idempotent request and retry_safe is False. With `stall_timeout`,
    the limit is on time without progress (attempt.progressed()) rather than on the total, and
    `timeout` bounds the total. Waiting for the BMC's lock counts against `lock_timeout` (default:
    the whole `timeout`), and running out of it raises BmcBusy.
    """
    deadline = time.monotonic() + timeout
    lock = bmc_lock(key)
    wait = timeout if lock_timeout is None else min(lock_timeout, timeout)
    if not lock.acquire(timeout=wait):
        raise BmcBusy(f"{key}: {what}: another operation held this BMC for {wait:.1f}s")
    try:
        tries = 0
        while True:
            attempt = Attempt()
            future = POOL.submit(fn, attempt)
            try:
                return _wait(future, attempt, deadline, stall_timeout)
            except FutureTimeout:
                attempt.cancelled = True
                abandon(attempt)
                waited = time.monotonic() - attempt.progress_at
                if not attempt.answered:
                    raise BmcUnreachable(f"{key}: {what}: no answer from the BMC within {timeout:.1f}s") from None
                raise BmcTimeout(f"{key}: {what}: no progress for {waited:.1f}s; abandoned") from None
            except DriverError as e:
                remaining = deadline - time.monotonic()
                pause = backoff * (2 ** tries)
                if (not e.retryable or tries >= retries or (attempt.committed and not retry_safe)
                        or remaining <= pause):
                    raise
                log.info("bmc.retry bmc=%s op=%s try=%d error=%s", key, what, tries + 1, e)
                time.sleep(pause)
                tries += 1
    finally:
        lock.release()


def _wait(future, attempt: Attempt, deadline: float, stall_timeout: float | None):
    if stall_timeout is None:
        return future.result(timeout=max(0.0, deadline - time.monotonic()))
    while True:
        now = time.monotonic()
        limit = min(deadline, attempt.progress_at + stall_timeout)
        if now >= limit:
            raise FutureTimeout()
        try:
            return future.result(timeout=min(0.25, limit - now))
        except FutureTimeout:
            continue
