"""Running BMC calls so that none can hang the caller: one at a time per BMC, each under a deadline.

pyghmi calls block the calling thread and, before provisioner.drivers.pyghmi_fixes, could block
it forever. So every driver operation runs on a shared pool thread while the caller waits with a
deadline; if the deadline passes, the caller gets BmcTimeout (or BmcUnreachable if the BMC never
answered at all) and the stuck call is abandoned: it is told to stop at its next round trip and
its session is dropped so nothing reuses it. The per-BMC lock is process-wide, keyed by
address:port, so two driver objects for one BMC never interleave.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TypeVar

from provisioner.errors import BmcBusy, BmcTimeout, BmcUnreachable, DriverError
from provisioner.observability import metrics

log = logging.getLogger(__name__)
T = TypeVar("T")



class DaemonPool:
    """Like ThreadPoolExecutor, but with daemon threads: an abandoned call stuck in pyghmi must not
    hold up interpreter exit (ThreadPoolExecutor joins its workers at exit). Threads are started on
    demand, reused, and end after a minute idle."""

    def __init__(self, max_workers: int, name: str, idle_s: float = 60.0):
        self.max_workers, self.name, self.idle_s = max_workers, name, idle_s
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = self._count = 0
        self._ids = itertools.count()

    def submit(self, fn: Callable[..., T], *args) -> Future:
        future: Future = Future()
        self._queue.put((future, fn, args))
        with self._lock:
            if self._idle == 0 and self._count < self.max_workers:
                self._count += 1
                threading.Thread(target=self._work, name=f"{self.name}_{next(self._ids)}", daemon=True).start()
        return future

    def _work(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
            try:
                future, fn, args = self._queue.get(timeout=self.idle_s)
            except queue.Empty:
                with self._lock:
                    self._idle -= 1
                    if self._queue.empty():
                        self._count -= 1
                        return
                continue
            with self._lock:
                self._idle -= 1
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args))
                except BaseException as e:  # handed to the waiting caller
                    future.set_exception(e)
            del future, fn, args


# The bound only matters if calls get stuck.
POOL = DaemonPool(max_workers=1024, name="bmc-call")
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
        self.answered = False      # the BMC answered during this attempt (a login, a reply)
        self.committed = False     # a non-idempotent request was sent: do not retry
        self.cancelled = False     # the caller gave up: stop at the next round trip
        self.progress_at = time.monotonic()
        self.session = None        # whatever the driver needs to drop when abandoning

    def progressed(self) -> None:
        self.progress_at = time.monotonic()

    def check(self) -> None:
        if self.cancelled:
            raise BmcTimeout("operation abandoned by its caller")


def run(key: str, what: str, fn: Callable[[Attempt], T], *, driver: str = "ipmi", **kw) -> T:
    """`_run`, counted in the metrics by driver, operation and outcome."""
    with metrics.bmc_operation(driver, what):
        return _run(key, what, fn, **kw)


def _run(key: str, what: str, fn: Callable[[Attempt], T], *, timeout: float, retries: int, backoff: float,
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
