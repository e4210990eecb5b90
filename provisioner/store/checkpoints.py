"""Signed checkpoints of the audit chain's head, kept outside the database (Ed25519, RFC 8032).

The hash chain proves no entry was edited in place; it cannot prove the chain was not rewritten
from some entry on (hashes recomputed), cut short, or emptied by someone with write access to the
database. So the server signs the head (seq, hash) every N entries and M minutes with a key that
lives in a file outside the database, and appends the signed checkpoint to a file and to the log
stream (ship both off the host). `verify` then holds the chain against them with the public key:
an entry whose hash differs from a signed one was rewritten; a chain shorter than a signed seq was
truncated or emptied.

Key file: PEM PKCS#8, created with mode 0600 by os.open (never chmod-ed after the fact); the
public key beside it (`.pub`). One checkpoint per line of JSON:
    {"seq": 42, "hash": "…", "at": "2026-…Z", "key": "<sha256 of the public key>", "sig": "<base64>"}
"""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import select

from provisioner.errors import AuditError
from provisioner.releases.canonical import canonical_json, sha256_hex
from provisioner.store import audit
from provisioner.store.audit import AuditProblem
from provisioner.store.models import AuditRow

log = logging.getLogger("provisioner.audit")

KEY_FILE, CHECKPOINT_FILE = "audit-signing.key", "audit-checkpoints.jsonl"
DOMAIN = b"provisioner audit checkpoint v1\0"  # a signature here means nothing anywhere else


def public_path(key_path: Path) -> Path:
    return key_path.with_suffix(".pub")


def create_key(key_path: Path) -> Ed25519PrivateKey:
    """A new signing key at `key_path` (0600 from its creation; refuses to overwrite) and its .pub."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    key_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    public_path(key_path).write_bytes(public_pem(key.public_key()))
    return key


def public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_or_create_key(key_path: Path) -> Ed25519PrivateKey:
    if not key_path.exists():
        return create_key(key_path)
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise AuditError(f"{key_path} is not an Ed25519 private key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError) as e:
        raise AuditError(f"cannot read the public key {path}: {e}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise AuditError(f"{path} is not an Ed25519 public key")
    return key


def key_id(key: Ed25519PublicKey) -> str:
    return sha256_hex(public_pem(key))[:16]


@dataclass(frozen=True)
class Checkpoint:
    seq: int
    hash: str
    at: str
    key: str
    sig: str = ""

    def payload(self) -> bytes:
        return DOMAIN + canonical_json({"seq": self.seq, "hash": self.hash, "at": self.at, "key": self.key})

    def line(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True)


def sign_head(store, key: Ed25519PrivateKey) -> Checkpoint:
    with store.db.session() as s:
        seq, h = audit.head(s)
    cp = Checkpoint(seq, h, datetime.now(UTC).isoformat(timespec="seconds"), key_id(key.public_key()))
    return Checkpoint(**{**cp.__dict__, "sig": base64.b64encode(key.sign(cp.payload())).decode()})


def append(path: Path, cp: Checkpoint) -> None:
    """One line, appended and fsync-ed: the file only grows."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, (cp.line() + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def read(path: Path) -> list[tuple[int, Checkpoint | None]]:
    """(line number, checkpoint or None when the line is not one) for every non-empty line."""
    out = []
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as e:
        raise AuditError(f"cannot read the checkpoint file {path}: {e.strerror}") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            out.append((n, Checkpoint(int(d["seq"]), str(d["hash"]), str(d["at"]), str(d["key"]), str(d["sig"]))))
        except (ValueError, KeyError, TypeError):
            out.append((n, None))
    return out


def verify(store, path: Path, public_key: Ed25519PublicKey) -> tuple[int, list[AuditProblem]]:
    """Hold the chain against the signed checkpoints: (checkpoints that verified, problems)."""
    with store.db.session() as s:
        hashes = dict(s.execute(select(AuditRow.seq, AuditRow.hash)).all())
    last = max(hashes, default=0)
    problems, good = [], 0
    entries = read(path)
    if not entries:
        problems.append(AuditProblem(0, f"no checkpoints in {path}: nothing to hold the chain against"))
    for n, cp in entries:
        if cp is None:
            problems.append(AuditProblem(0, f"checkpoint file line {n} is not a checkpoint"))
            continue
        try:
            public_key.verify(base64.b64decode(cp.sig), cp.payload())
        except (InvalidSignature, ValueError):
            problems.append(AuditProblem(cp.seq, f"checkpoint of {cp.at} (line {n}) is not signed by this public key"))
            continue
        good += 1
        if cp.seq == 0:
            continue
        if cp.seq not in hashes:
            what = "emptied" if not hashes else f"truncated: the chain ends at entry {last}"
            problems.append(AuditProblem(cp.seq, f"signed at {cp.at} but missing: the audit log was {what}"))
        elif hashes[cp.seq] != cp.hash:
            problems.append(AuditProblem(cp.seq, f"differs from the checkpoint signed at {cp.at}: the chain was "
                                                 f"rewritten up to here"))
    return good, problems


class Checkpointer:
    """Signs the head every `every_entries` new entries or `every_seconds`, whichever comes first
    (and only when the head moved). The server runs `run()` in a thread; `tick()` is one look."""

    def __init__(self, store, key_path: Path, file: Path, every_entries: int = 100, every_seconds: float = 600):
        self.store, self.file = store, Path(file)
        self.key = load_or_create_key(Path(key_path))
        self.every_entries, self.every_seconds = every_entries, every_seconds
        signed = [cp for _, cp in read(self.file) if cp] if self.file.exists() else []
        self.last_seq = signed[-1].seq if signed else -1
        self.last_time = datetime.now(UTC) if signed else None

    def tick(self, force: bool = False) -> Checkpoint | None:
        with self.store.db.session() as s:
            seq, _ = audit.head(s)
        if seq == self.last_seq and not force:
            return None
        elapsed = (datetime.now(UTC) - self.last_time).total_seconds() if self.last_time else None
        if not (force or self.last_seq < 0 or seq - self.last_seq >= self.every_entries
                or elapsed is None or elapsed >= self.every_seconds):
            return None
        cp = sign_head(self.store, self.key)
        append(self.file, cp)
        log.info("audit.checkpoint seq=%d hash=%s at=%s key=%s sig=%s", cp.seq, cp.hash, cp.at, cp.key, cp.sig)
        self.last_seq, self.last_time = cp.seq, datetime.now(UTC)
        return cp

    def run(self, stop: threading.Event, poll: float = 5.0) -> None:
        while not stop.wait(poll):
            self.tick()
        self.tick()  # the last word before shutting down
