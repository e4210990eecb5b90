"""Copying a whole store to another database (`provisioner db copy`): every table, in one transaction,
the audit chain verified on arrival before anything is committed."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import DateTime, Integer, func, insert, select, text
from sqlalchemy.orm import Session

from provisioner.errors import AuditError, StoreError
from provisioner.store import audit
from provisioner.store.db import Database
from provisioner.store.errors import store_errors
from provisioner.store.models import Base

BATCH = 2000


def _utc(row: dict, stamps: list[str]) -> dict:
    # SQLite hands datetimes back naive (they were written as UTC); PostgreSQL would read a naive
    # value in its session time zone, which would move every timestamp and break the audit hashes.
    for k in stamps:
        v = row[k]
        if isinstance(v, datetime) and v.tzinfo is None:
            row[k] = v.replace(tzinfo=UTC)
    return row


def copy_store(source: Database, target: Database) -> dict[str, int]:
    """Copy every row of `source` into the empty `target` (both at the same schema revision).

    Returns rows copied per table. Raises StoreError if the target already holds data, and
    AuditError (nothing committed) if the audit chain does not verify in the target.
    """
    if source.revision != target.revision:
        raise StoreError(f"the stores are at different schema revisions ({source.revision} and "
                         f"{target.revision}): run `provisioner db upgrade` on the older one first")
    tables = Base.metadata.sorted_tables  # parents before children (foreign keys)
    counts: dict[str, int] = {}
    with store_errors(target.given_url), target.engine.begin() as dst:
        busy = [t.name for t in tables if dst.execute(select(func.count()).select_from(t)).scalar()]
        if busy:
            raise StoreError(f"the store at {target.shown_url} already holds data ({', '.join(busy)}): "
                             f"copy into an empty database")
        with store_errors(source.given_url), source.engine.connect() as src:
            for t in tables:
                stamps = [c.name for c in t.columns if isinstance(c.type, DateTime)]
                counts[t.name] = 0
                rows = src.execution_options(yield_per=BATCH).execute(select(t).order_by(*t.primary_key.columns))
                for batch in rows.partitions(BATCH):
                    dst.execute(insert(t), [_utc(dict(r._mapping), stamps) for r in batch])
                    counts[t.name] += len(batch)
        if dst.dialect.name == "postgresql":  # explicit ids were inserted: move each serial past them
            for t in tables:
                pk = list(t.primary_key.columns)
                if len(pk) == 1 and isinstance(pk[0].type, Integer) and counts[t.name]:
                    dst.execute(text(f"SELECT setval(pg_get_serial_sequence('{t.name}', '{pk[0].name}'), "
                                     f"(SELECT max({pk[0].name}) FROM {t.name}))"))
        with Session(bind=dst) as s:
            n, problems = audit.verify(s)
        copied = counts.get("audit_log", 0)
        if problems or n != copied:
            raise AuditError(f"the audit chain does not verify in {target.shown_url} after the copy "
                             f"({problems[0] if problems else f'{n} of {copied} entries'}); "
                             f"nothing was committed: run `provisioner audit verify` on the source")
    return counts
