"""A content-addressed artifact store: `sha256/<hex>`, written once, verified on every read."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from provisioner.errors import ArtifactMismatch, ReleaseError


class ArtifactStore:
    def __init__(self, root: Path | str):
        self.root = Path(root)
        (self.root / "sha256").mkdir(parents=True, exist_ok=True)

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
