"""What a TFTP filename means: a regular file under the root, or bytes from the resolver.

Runs on worker threads (it blocks on the disk and on the resolver), never on the event loop.
Every outcome is a `Payload` or a `Refusal`; a resolver that raises becomes a Refusal too.
Files are read whole (boot files are small) and the bytes are shared between transfers.
"""

from __future__ import annotations

import errno
import logging
import os
import queue
import stat
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from provisioner.netboot.tftp_wire import ERR_ACCESS, ERR_NOT_FOUND, ERR_UNDEFINED, to_netascii

log = logging.getLogger("provisioner.netboot.tftp")

Client = tuple[str, int]
Resolver = Callable[[str, Client], "bytes | None"]


@dataclass(frozen=True, slots=True)
class Payload:
    data: bytes
    source: str  # "file" or "resolver"


@dataclass(frozen=True, slots=True)
class Refusal:
    code: int  # TFTP error code sent to the client
    message: str  # text sent to the client
    reason: str  # what goes to the log


MAX_NAME = 1024  # bytes; Linux allows 4096 for a path, boot files need far less
NOT_FOUND = Refusal(ERR_NOT_FOUND, "File not found", "not found")
NOT_REGULAR = Refusal(ERR_NOT_FOUND, "File not found", "not a regular file")


def normalise(raw: bytes) -> str | Refusal:
    """The client's filename as a clean relative path, or why it is refused.

    Leading slashes are dropped (pxelinux and GRUB ask for "/pxelinux.cfg/..."), backslashes
    become slashes (Windows PXE clients), "." and empty parts go. ".." is refused outright.
    """
    if len(raw) > MAX_NAME:
        return Refusal(ERR_NOT_FOUND, "File not found", f"filename of {len(raw)} bytes")
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        return Refusal(ERR_NOT_FOUND, "File not found", "filename is not UTF-8")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        return Refusal(ERR_NOT_FOUND, "File not found", "control character in filename")
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if ".." in parts:
        return Refusal(ERR_ACCESS, "Access violation", "'..' in filename")
    if not parts:
        return NOT_FOUND
    return "/".join(parts)


class FileSource:
    """Maps names to bytes. Files are read whole (boot files are small) and cached by inode."""

    def __init__(self, root: Path | None, resolve: Resolver | None, *,
                 max_file_size: int = 256 << 20, cache_bytes: int = 128 << 20):
        self.root = Path(os.path.realpath(root)) if root is not None else None
        self.resolve = resolve
        self.max_file_size = max_file_size
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[tuple, bytes] = OrderedDict()
        self._cached = 0
        self._lock = threading.Lock()

    def render(self, name: str, client: Client) -> Payload | Refusal | None:
        """Ask the resolver; None means it does not know the name. Never raises."""
        if self.resolve is None:
            return None
        try:
            data = self.resolve(name, client)
        except Exception as exc:
            log.warning("tftp.render_error client=%s file=%s error=%r", _fmt(client), name,
                        exc, exc_info=True)
            return Refusal(ERR_UNDEFINED, "render error", f"render error: {exc!r}")
        if data is None:
            return None
        if not isinstance(data, bytes | bytearray | memoryview):
            return Refusal(ERR_UNDEFINED, "render error", f"resolver returned {type(data).__name__}")
        return Payload(bytes(data), "resolver")

    def from_root(self, name: str) -> Payload | Refusal | None:
        """The regular file `name` under the root; NOT_FOUND or NOT_REGULAR let the resolver try.

        None when there is no root. Never raises.
        """
        if self.root is None:
            return None
        try:
            return self._from_root(name)
        except Exception as exc:  # a bug here must refuse one request, not kill a worker
            log.exception("tftp.bug file=%s", name)
            return Refusal(ERR_UNDEFINED, "Internal error", f"lookup failed: {exc!r}")

    def _from_root(self, name: str) -> Payload | Refusal:
        assert self.root is not None
        # realpath resolves every symlink, so a link that leads out of the root is caught here.
        real = os.path.realpath(self.root / name)
        if os.path.commonpath((real, self.root)) != str(self.root):
            return Refusal(ERR_ACCESS, "Access violation", "path leaves the root")
        try:
            st = os.stat(real)
        except (FileNotFoundError, NotADirectoryError):
            return NOT_FOUND
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG:
                return NOT_FOUND
            return Refusal(ERR_ACCESS, "Access violation", f"stat: {exc.strerror}")
        if not stat.S_ISREG(st.st_mode):
            return NOT_REGULAR
        if st.st_size > self.max_file_size:
            return Refusal(ERR_UNDEFINED, "File too large", f"{st.st_size} bytes is over the limit")
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        with self._lock:
            data = self._cache.get(key)
            if data is not None:
                self._cache.move_to_end(key)
                return Payload(data, "file")
        try:
            data = self._read(real)
        except OSError as exc:
            return Refusal(ERR_ACCESS, "Access violation", f"read: {exc.strerror or exc}")
        if isinstance(data, Refusal):
            return data
        self._remember(key, data)
        return Payload(data, "file")

    def _read(self, real: str) -> bytes | Refusal:
        # O_NONBLOCK: a FIFO swapped in after the stat must not hang a worker.
        fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return NOT_REGULAR
            if st.st_size > self.max_file_size:
                return Refusal(ERR_UNDEFINED, "File too large", f"{st.st_size} bytes is over the limit")
            with os.fdopen(fd, "rb", closefd=False) as f:
                return f.read(self.max_file_size + 1)[: self.max_file_size]
        finally:
            os.close(fd)

    def _remember(self, key: tuple, data: bytes) -> None:
        if len(data) > self.cache_bytes // 4:
            return
        with self._lock:
            if key in self._cache:
                return
            self._cache[key] = data
            self._cached += len(data)
            while self._cached > self.cache_bytes:
                _, old = self._cache.popitem(last=False)
                self._cached -= len(old)


class Workers:
    """Daemon threads draining a queue: a resolver stuck forever never blocks interpreter exit."""

    def __init__(self, name: str, count: int):
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._run, name=f"{name}-{i}", daemon=True)
                         for i in range(count)]
        for t in self._threads:
            t.start()

    def submit(self, fn: Callable, *args) -> None:
        self._jobs.put((fn, args))

    def close(self) -> None:
        for _ in self._threads:
            self._jobs.put(None)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                job[0](*job[1])
            except Exception:
                log.exception("tftp.bug worker job failed")


class Lookups:
    """Finds the bytes for names off the event loop: files on one pool of threads, the resolver
    on another, so that a resolver that hangs cannot hold up plain files."""

    def __init__(self, source: FileSource, threads: int = 4):
        self.source = source
        self._io = Workers("tftp-io", threads)
        self._render = Workers("tftp-render", threads) if source.resolve is not None else None

    def submit(self, name: str, client: Client, netascii: bool,
               done: Callable[[Payload | Refusal], None]) -> None:
        """Look `name` up; `done(outcome)` is called on a worker thread."""
        self._io.submit(self._from_root, name, client, netascii, done)

    def close(self) -> None:
        self._io.close()
        if self._render is not None:
            self._render.close()

    def _from_root(self, name: str, client: Client, netascii: bool, done: Callable) -> None:
        outcome = self.source.from_root(name)
        if self._render is not None and outcome in (None, NOT_FOUND, NOT_REGULAR):
            self._render.submit(self._from_resolver, name, client, netascii, done, outcome)
            return
        self._finish(outcome or NOT_FOUND, netascii, done)

    def _from_resolver(self, name: str, client: Client, netascii: bool, done: Callable,
                       from_root: Refusal | None) -> None:
        outcome = self.source.render(name, client)
        self._finish(outcome if outcome is not None else (from_root or NOT_FOUND), netascii, done)

    @staticmethod
    def _finish(outcome: Payload | Refusal, netascii: bool, done: Callable) -> None:
        if netascii and isinstance(outcome, Payload):
            outcome = Payload(to_netascii(outcome.data), outcome.source)
        done(outcome)


def _fmt(client: Client) -> str:
    return f"{client[0]}:{client[1]}"
