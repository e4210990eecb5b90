"""The append-only, hash-chained audit log.

Each entry's hash is sha256(prev_hash || canonical JSON of seq, at, actor, action, subject,
details). The chain's head (last seq and hash) is kept in `meta`, so deleting the newest
entries is caught as well as editing or deleting any older one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from provisioner.releases.canonical import canonical_json, sha256_hex
from provisioner.store.models import AuditRow, MetaRow

GENESIS = "0" * 64
HEAD_KEY = "audit_head"


def entry_hash(prev_hash: str, seq: int, at: datetime, actor: str, action: str, subject: str,
               details: dict) -> str:
    body = {"seq": seq, "at": _iso(at), "actor": actor, "action": action, "subject": subject,
            "details": details}
    return sha256_hex(prev_hash.encode() + canonical_json(body))


def _iso(at: datetime) -> str:
    if at.tzinfo is None:  # SQLite hands datetimes back naive; they were stored as UTC
        at = at.replace(tzinfo=UTC)
    return at.astimezone(UTC).isoformat(timespec="microseconds")


def append(s: Session, actor: str, action: str, subject: str, details: dict | None = None) -> AuditRow:
    """Append one entry in the caller's transaction (so the fact and its record commit together)."""
    details = details or {}
    head = s.get(MetaRow, HEAD_KEY, with_for_update=True)
    seq, prev = (0, GENESIS) if head is None else (int(head.value.split(":")[0]), head.value.split(":")[1])
    seq += 1
    at = datetime.now(UTC)
    h = entry_hash(prev, seq, at, actor, action, subject, details)
    row = AuditRow(seq=seq, at=at, actor=actor, action=action, subject=subject, details=details,
                   prev_hash=prev, hash=h)
    s.add(row)
    if head is None:
        s.add(MetaRow(key=HEAD_KEY, value=f"{seq}:{h}"))
    else:
        head.value = f"{seq}:{h}"
    s.flush()
    return row


@dataclass(frozen=True)
class AuditProblem:
    seq: int
    problem: str

    def __str__(self) -> str:
        return f"audit entry {self.seq}: {self.problem}"


def verify(s: Session) -> tuple[int, list[AuditProblem]]:
    """Walk the chain; return (entries checked, problems found)."""
    problems: list[AuditProblem] = []
    prev, expect_seq, n = GENESIS, 1, 0
    for row in s.scalars(select(AuditRow).order_by(AuditRow.seq)):
        n += 1
        if row.seq != expect_seq:
            problems.append(AuditProblem(expect_seq, f"missing (deleted?): the chain jumps from "
                                                     f"{expect_seq - 1} to {row.seq}"))
        if row.prev_hash != prev:
            problems.append(AuditProblem(row.seq, "does not link to the entry before it"))
        if entry_hash(row.prev_hash, row.seq, row.at, row.actor, row.action, row.subject,
                      row.details) != row.hash:
            problems.append(AuditProblem(row.seq, f"was edited: its content no longer matches its hash "
                                                  f"({row.action} {row.subject})"))
        prev, expect_seq = row.hash, row.seq + 1
    head = s.get(MetaRow, HEAD_KEY)
    if head is not None:
        hseq, hhash = head.value.split(":")
        if int(hseq) != expect_seq - 1 or hhash != prev:
            problems.append(AuditProblem(int(hseq), f"the newest entries were deleted: the head says "
                                                    f"entry {hseq}, the log ends at {expect_seq - 1}"))
    elif n:
        problems.append(AuditProblem(0, "the chain head record is missing"))
    return n, problems
