"""A content-addressed artifact store: `sha256/<hex>`, written once, verified on every read."""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
import threading
from pathlib import Path
from typing import BinaryIO

from provisioner.errors import ArtifactMismatch, ArtifactMissing, ReleaseError


class ArtifactStore:
    def __init__(self, root: Path | str):
        self.root = Path(root)
        (self.root / "sha256").mkdir(parents=True, exist_ok=True)
        # digest -> (device, inode, size, mtime, ctime) of the file this process last hashed whole
        self._verified: dict[str, tuple[int, int, int, int, int]] = {}
        self._lock = threading.Lock()

    def path(self, digest: str) -> Path:
        if len(digest) != 64 or not all(c in "0123456789abcdef" for c in digest):
            raise ReleaseError(f"{digest!r} is not a sha256 hex digest")
        return self.root / "sha256" / digest

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def put(self, data: bytes, expected: str | None = None) -> str:
        """Store `data` under its digest. Existing artifacts are never rewritten."""
        digest = hashlib.sha256(data).hexdigest()
        if expected and expected != digest:
            raise ArtifactMismatch(f"artifact bytes hash to {digest}, not {expected}")
        final = self.path(digest)
        if final.exists():
            self.verify(digest)  # same name means same bytes; prove the stored copy is intact
            return digest
        fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=".incoming-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o444)
            try:
                os.link(tmp, final)  # atomic and exclusive: never replaces an existing file
            except FileExistsError:
                self.verify(digest)
        finally:
            os.unlink(tmp)
        return digest

    def put_file(self, path: Path, expected: str | None = None) -> str:
        return self.put(Path(path).read_bytes(), expected)

    def read(self, digest: str) -> bytes:
        """The artifact's bytes; ArtifactMismatch if the stored file was altered."""
        p = self.path(digest)
        try:
            data = p.read_bytes()
        except FileNotFoundError:
            raise ReleaseError(f"artifact {digest} is not in the store at {self.root}") from None
        if hashlib.sha256(data).hexdigest() != digest:
            raise ArtifactMismatch(f"artifact {digest} in {p} was altered: its bytes no longer match its name")
        return data

    def verify(self, digest: str) -> None:
        self.read(digest)

    def open_verified(self, digest: str) -> tuple[BinaryIO, int]:
        """The artifact open for reading, and its size, proven to hash to its name.

        The open file is hashed unless this process hashed this very file before (same device,
        inode, size, mtime and ctime: any write, replacement or `touch` changes one of them), so
        a file altered after a good read is caught at the next read. The caller serves from the
        returned file, never from the path again. ArtifactMissing / ArtifactMismatch; messages
        name the digest, never a local path (they reach the network).
        """
        try:
            f = open(self.path(digest), "rb")  # noqa: SIM115 -- the caller streams it and closes it
        except (FileNotFoundError, NotADirectoryError):
            raise ArtifactMissing(f"no artifact sha256:{digest} in the store") from None
        try:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise ArtifactMissing(f"artifact sha256:{digest} is not a regular file")
            key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            if self._verified.get(digest) != key:
                if hashlib.file_digest(f, "sha256").hexdigest() != digest:
                    with self._lock:
                        self._verified.pop(digest, None)
                    raise ArtifactMismatch(f"artifact sha256:{digest} was altered: its bytes no longer match its name")
                with self._lock:
                    self._verified[digest] = key
            return f, st.st_size
        except BaseException:
            f.close()
            raise

    def check_release(self, document: dict) -> list[str]:
        """One line per artifact or template of a frozen release that is not intact in the store."""
        wanted = sorted({*document["artifacts"], *document["templates"].values()})
        problems = []
        for digest in wanted:
            try:
                f, _ = self.open_verified(digest)
                f.close()
            except ReleaseError as e:
                problems.append(str(e))
        return problems
