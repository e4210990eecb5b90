"""The append-only, hash-chained audit log.

Each entry's hash is sha256(prev_hash || canonical JSON of seq, at, actor, action, subject,
details, and, when the actor is an `Actor`, its account id, authentication method and client).
The chain's head (last seq and hash) is kept in `meta`, so deleting the newest entries is caught
as well as editing or deleting any older one. What a writer with the database's keys could still
do (rewrite the chain consistently, truncate it, empty it) is caught by the signed checkpoints of
`checkpoints.py`, kept outside the database.
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


IDENTITY_FIELDS = ("account_id", "auth_method", "client")


def entry_hash(prev_hash: str, seq: int, at: datetime, actor: str, action: str, subject: str,
               details: dict, identity: dict | None = None) -> str:
    body = {"seq": seq, "at": _iso(at), "actor": str(actor), "action": action, "subject": subject,
            "details": details}
    # Entries written before identities existed hash exactly as they did then
    if identity and any(identity.get(k) is not None for k in IDENTITY_FIELDS):
        body.update({k: identity.get(k) for k in IDENTITY_FIELDS})
    return sha256_hex(prev_hash.encode() + canonical_json(body))


def row_hash(row: AuditRow) -> str:
    return entry_hash(row.prev_hash, row.seq, row.at, row.actor, row.action, row.subject, row.details,
                      {k: getattr(row, k) for k in IDENTITY_FIELDS})


def _iso(at: datetime) -> str:
    if at.tzinfo is None:  # SQLite hands datetimes back naive; they were stored as UTC
        at = at.replace(tzinfo=UTC)
    return at.astimezone(UTC).isoformat(timespec="microseconds")


def append(s: Session, actor: str, action: str, subject: str, details: dict | None = None) -> AuditRow:
    """Append one entry in the caller's transaction (so the fact and its record commit together).

    `actor` is a name, or an `Actor` whose account, authentication method and client are recorded.
    """
    details = details or {}
    fields = actor.audit_fields() if hasattr(actor, "audit_fields") else {}
    head = s.get(MetaRow, HEAD_KEY, with_for_update=True)
    seq, prev = (0, GENESIS) if head is None else (int(head.value.split(":")[0]), head.value.split(":")[1])
    seq += 1
    at = datetime.now(UTC)
    h = entry_hash(prev, seq, at, actor, action, subject, details, fields)
    row = AuditRow(seq=seq, at=at, actor=str(actor), action=action, subject=subject, details=details,
                   prev_hash=prev, hash=h, **fields)
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
        if row_hash(row) != row.hash:
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


def head(s: Session) -> tuple[int, str]:
    """(seq, hash) of the chain's newest entry; (0, GENESIS) for an empty chain."""
    row = s.get(MetaRow, HEAD_KEY)
    if row is None:
        return 0, GENESIS
    seq, h = row.value.split(":")
    return int(seq), h


def chained_entries(s: Session, subject: str, actions: tuple[str, ...]) -> list[AuditRow]:
    """The entries about `subject` that are part of the chain: each hashes to its stored hash,
    links to the entry before it, and is linked to by the entry after it (or is the head).

    A row inserted beside the chain, or edited in place, is left out. What only checkpoints catch
    (the whole chain rewritten consistently) is `audit verify --checkpoints`'s job.
    """
    rows = list(s.scalars(select(AuditRow).where(AuditRow.subject == subject, AuditRow.action.in_(actions))
                          .order_by(AuditRow.seq)))
    head_seq, head_hash = head(s)
    out = []
    for row in rows:
        if row_hash(row) != row.hash:
            continue
        before = s.get(AuditRow, row.seq - 1)
        if (before.hash if before is not None else GENESIS if row.seq == 1 else None) != row.prev_hash:
            continue
        after = s.get(AuditRow, row.seq + 1)
        linked = after.prev_hash == row.hash if after is not None else (head_seq, head_hash) == (row.seq, row.hash)
        if linked:
            out.append(row)
    return out
