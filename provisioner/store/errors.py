"""The one translation point from SQLAlchemy and database-driver errors into StoreError (exit 5).

Every message is one line: what happened to which store (its URL with the password masked),
and what to do. Driver texts are cut to their first line and scrubbed of the URL's password.

  missing driver      -> the package to install          (ImportError while opening)
  unknown URL scheme  -> the URL forms we know           (NoSuchModuleError, ArgumentError)
  disk full           -> free space, nothing was written (SQLITE_FULL, SQLSTATE 53100)
  damaged database    -> restore from a backup           (SQLITE_CORRUPT/NOTADB, SQLSTATE XX001/XX002)
  cannot open/reach   -> check the path or the server    (SQLITE_CANTOPEN, connection failures)
  anything else       -> the driver's first line

IntegrityError passes through untouched: callers use it as an answer ("already approved").
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from urllib.parse import unquote

from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, NoSuchModuleError, SQLAlchemyError

from provisioner.errors import ReleaseError, StoreError

# scheme://user:password@host -> scheme://user:***@host (also when the URL does not parse)
_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s]*:)(?P<pw>[^@\s]*)@")

# Python module a driver imports -> what to install
DRIVER_PACKAGES = {
    "psycopg": "psycopg[binary]",
    "psycopg_binary": "psycopg[binary]",
    "psycopg2": "psycopg2-binary",
    "pymysql": "pymysql",
    "MySQLdb": "mysqlclient",
}

URL_FORMS = "sqlite:////PATH/provisioner.db or postgresql://USER:PASSWORD@HOST:PORT/DATABASE"

SQLITE_FULL = {"SQLITE_FULL"}
SQLITE_DAMAGED = {"SQLITE_CORRUPT", "SQLITE_NOTADB"}
PG_FULL = {"53100"}  # disk_full (PostgreSQL Appendix A, class 53: insufficient resources)
PG_DAMAGED = {"XX001", "XX002"}  # data_corrupted, index_corrupted (class XX: internal error)


def mask_url(url: str) -> str:
    return _PASSWORD.sub(lambda m: m["head"] + "***@", url)


def _password(url: str) -> str | None:
    m = _PASSWORD.search(url)
    return m["pw"] if m and m["pw"] else None


def first_line(message: str, url: str) -> str:
    """The driver's message for people: first line, no password (raw or URL-encoded), bounded."""
    line = next((s.strip() for s in str(message).splitlines() if s.strip()), "no detail")
    line = mask_url(line)
    pw = _password(url)
    if pw:
        for form in {pw, unquote(pw)}:
            line = line.replace(form, "***")
    return line[:240]


def translate(e: BaseException, url: str) -> Exception:
    """The StoreError (or other provisioner error) that `e` means to an operator."""
    shown = mask_url(url)
    if isinstance(e, ImportError):
        module = (e.name or "").split(".")[0]
        package = DRIVER_PACKAGES.get(module) or ("psycopg[binary]" if "postgres" in url else module or "its driver")
        hint = " (or write postgresql://, which uses psycopg 3)" if module == "psycopg2" else ""
        return StoreError(f"the store at {shown} needs a database driver that is not installed: "
                          f"pip install '{package}'{hint}")
    if isinstance(e, NoSuchModuleError):
        scheme = url.split(":", 1)[0]
        return StoreError(f"cannot open the store at {shown}: no database driver for {scheme!r}; use {URL_FORMS}")
    if isinstance(e, ArgumentError):
        # Not echoed: in a string that does not parse, nobody can tell which part is a password.
        return StoreError(f"--db (or PROVISIONER_DB) is not a database URL; use {URL_FORMS}")
    if isinstance(e, DBAPIError):
        orig = e.orig
        detail = first_line(orig if orig is not None else e, url)
        code = getattr(orig, "sqlite_errorname", None) or getattr(orig, "sqlstate", None) or ""
        if code in SQLITE_FULL or code in PG_FULL or (code.startswith("SQLITE_IOERR") and _no_space_left(url)):
            return StoreError(f"the store at {shown} is out of disk space ({detail}): free space on the disk "
                              f"that holds it and run the command again; this command wrote nothing")
        if code in SQLITE_DAMAGED or code in PG_DAMAGED:
            return StoreError(f"the store at {shown} is damaged ({detail}): restore it from a backup "
                              f"(SQLite: `sqlite3 FILE .recover` saves what it can), then run "
                              f"`provisioner audit verify`")
        if code == "P0001" and "immutable" in detail:  # raised by the releases trigger (migration 0001)
            return ReleaseError(f"releases are immutable: build a new release instead ({detail})")
        if code.startswith("SQLITE_CANTOPEN") or code.startswith("SQLITE_READONLY") or code.startswith("SQLITE_PERM"):
            return StoreError(f"cannot open the store at {shown} ({detail}): check that its directory exists "
                              f"and this user may write there, or pass --db URL")
        if e.connection_invalidated or code.startswith("08") or code in ("", "28P01", "28000", "3D000", "57P01"):
            if not is_sqlite_url(url):
                return StoreError(f"cannot reach the store at {shown} ({detail}): check that PostgreSQL runs "
                                  f"there and the URL's host, port, user, password and database are right")
        return StoreError(f"the store at {shown} failed ({detail})")
    return StoreError(f"the store at {shown} failed ({first_line(e, url)})")


def _no_space_left(url: str) -> bool:
    """SQLite reports a full disk met while growing its WAL index as a plain I/O error
    (SQLITE_IOERR_SHMSIZE): look at the file system that holds the database."""
    if not url.startswith("sqlite:///"):
        return False
    try:
        st = os.statvfs(os.path.dirname(url.removeprefix("sqlite:///")) or ".")
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 64 * 1024


def is_sqlite_url(url: str) -> bool:
    return url.startswith("sqlite")


@contextmanager
def store_errors(url: str, *, opening: bool = False):
    """Run a block of store work; any database error leaves it translated (see the module docstring).
    While `opening`, an ImportError is a missing driver; later it would be a bug, and stays one."""
    try:
        yield
    except IntegrityError:
        raise
    except (SQLAlchemyError, ImportError) as e:
        if isinstance(e, ImportError) and not opening:
            raise
        raise translate(e, url) from None
