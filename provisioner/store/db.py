"""Opening the store (SQLite with WAL by default, PostgreSQL through psycopg 3) and checking its schema.

SQLite, the embedded default, is created and migrated on first use. Any other database is
migrated only by `provisioner db upgrade`: opening one whose schema is behind is a StoreError
naming that command, so several processes opening one store never race to run Alembic.
Every SQLAlchemy or driver error leaves this module as a StoreError (see `store_errors`).
"""

from __future__ import annotations

import functools
import os
import select
import threading
from contextlib import contextmanager, nullcontext
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker

from provisioner.errors import StoreError
from provisioner.store.errors import mask_url, store_errors

MIGRATIONS = Path(__file__).parent / "migrations"
IDLE_TX_SECONDS = 5.0  # below the leases' time (rollout/lease.py): a frozen client's locks go first


def default_url(data_dir: Path) -> str:
    return f"sqlite:///{Path(data_dir).resolve() / 'provisioner.db'}"


def normalize_url(url: str) -> str:
    """`postgresql://` (and `postgres://`, as libpq writes it) mean psycopg 3, not SQLAlchemy's psycopg2 default."""
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            return "postgresql+psycopg://" + url.removeprefix(plain)
    return url


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def _alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


@functools.cache
def schema_head() -> str:
    """The newest migration this provisioner knows (read once per process)."""
    return ScriptDirectory.from_config(_alembic_config()).get_current_head()


def make_engine(url: str) -> Engine:
    if is_sqlite(url):
        # Reads run side by side (WAL), so keep enough connections open for every serving thread:
        # an overflow connection is closed when returned, and opening one again costs more than
        # the query it was opened for.
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False},
                               pool_size=32, max_overflow=64)

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record):
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")  # readers never block the one writer
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    # A PostgreSQL connection costs a backend process, and opening one costs both sides a few
    # milliseconds: keep open as many as a worker's node threads use at once (64 slots), so a
    # wave starting does not open and close connections past the pool (an overflow connection is
    # closed on return: 0.6 new sessions per node with 16). A process frozen inside a transaction
    # (SIGSTOP, a paused VM) would hold its row locks (a rollout being claimed, a lease being
    # fenced) for as long as it stays frozen, so the server ends a transaction left idle longer
    # than IDLE_TX_SECONDS: no transaction here waits on anything but the database.
    idle_ms = int(1000 * float(os.environ.get("PROVISIONER_PG_IDLE_TX_SECONDS", IDLE_TX_SECONDS)))
    engine = create_engine(url, pool_size=64, max_overflow=16,
                           connect_args={"options": f"-c idle_in_transaction_session_timeout={idle_ms}"})
    event.listen(engine, "checkout", _replace_if_dropped)
    return engine


def _replace_if_dropped(dbapi_conn, _record, _proxy) -> None:
    """A pooled PostgreSQL connection the server dropped (a restart, an idle timeout) is replaced
    instead of failing the operation that drew it. What SQLAlchemy's pre_ping does with a round trip
    per checkout (a third of a rollout step's round trips) is told here by the socket alone: an idle
    connection has nothing to read unless the server closed it (EOF) or said why it is about to
    (a FATAL error), so a readable socket means a dead connection."""
    try:
        fd = dbapi_conn.fileno()
        readable = select.select([fd], [], [], 0)[0]
    except Exception:  # closed already, or no socket at all
        readable = True
    if readable:
        raise DisconnectionError("the server closed this connection")  # the pool draws a fresh one


def migrate(engine: Engine, revision: str = "head") -> None:
    cfg = _alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def schema_revision(engine: Engine) -> str | None:
    """The store's Alembic revision, or None for a database that has no schema yet."""
    with engine.connect() as conn:
        if not engine.dialect.has_table(conn, "alembic_version"):
            return None
        return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


def schema_state(url: str) -> tuple[str | None, str]:
    """(the store's revision or None, the newest this provisioner knows), without migrating anything."""
    with store_errors(url, opening=True):
        engine = make_engine(normalize_url(url))
        try:
            return schema_revision(engine), schema_head()
        finally:
            engine.dispose()


def _create_private(path: Path) -> None:
    """Create the SQLite file 0600 before SQLite does; SQLite gives its -wal and -shm the same mode.

    The umask is set for the creation itself, so the file is never readable by others, not even
    for the moment between a create and a chmod.
    """
    old = os.umask(0o077)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        pass
    except OSError as e:
        raise StoreError(f"cannot create the store at sqlite:///{path} ({e.strerror}: {e.filename}): check that "
                         f"its directory can be created and written by this user, or pass --db URL") from None
    finally:
        os.umask(old)


class Database:
    """An engine plus a session factory; `session()` commits on success and rolls back on error.

    `upgrade=True` migrates a store whose schema is behind (what `db upgrade` does); by default
    only SQLite is migrated on open, anything else must already be at `schema_head()`.
    """

    def __init__(self, url: str, *, upgrade: bool | None = None):
        self.url, self.given_url, self.shown_url = normalize_url(url), url, mask_url(url)
        with store_errors(url, opening=True):
            if is_sqlite(self.url) and self.url.startswith("sqlite:///") and ":memory:" not in self.url:
                _create_private(Path(self.url.removeprefix("sqlite:///")))
            self.engine = make_engine(self.url)
            self.revision = schema_revision(self.engine)
            if self.revision != schema_head():
                self._behind(upgrade if upgrade is not None else is_sqlite(self.url))
        self._factory = sessionmaker(self.engine, expire_on_commit=False)
        self._reader = self.engine if is_sqlite(self.url) else self.engine.execution_options(
            isolation_level="AUTOCOMMIT")
        # SQLite has one writer at a time. Threads of one process take turns on a lock (a fast
        # hand-over) instead of SQLite's busy handler, which sleeps up to 100 ms per retry and
        # collapsed a 200-client boot storm to 57 scripts/s.
        self._turn = threading.RLock() if is_sqlite(self.url) else nullcontext()

    def _behind(self, upgrade: bool) -> None:
        head, have = schema_head(), self.revision
        script = ScriptDirectory.from_config(_alembic_config())
        if have is not None and script.get_revision(have) is None:
            self.engine.dispose()
            raise StoreError(f"the store at {self.shown_url} has schema revision {have}, newer than this "
                             f"provisioner knows ({head}): upgrade provisioner")
        if not upgrade:
            self.engine.dispose()
            what = "has no schema yet" if have is None else f"has schema revision {have}, this provisioner needs {head}"
            raise StoreError(f"the store at {self.shown_url} {what}: run `provisioner db upgrade`")
        migrate(self.engine)
        self.revision = head

    @contextmanager
    def session(self):
        with store_errors(self.given_url), self._turn:
            s: Session = self._factory()
            try:
                yield s
                s.commit()
            except BaseException:
                s.rollback()
                raise
            finally:
                s.close()

    @contextmanager
    def read(self):
        """A Core connection for reads only: no turn to wait for (WAL readers never block), no commit.
        On PostgreSQL in autocommit: at READ COMMITTED each statement sees the store as of its own start
        inside a transaction too, so BEGIN and the ROLLBACK on return would be two round trips for nothing."""
        with store_errors(self.given_url), self._reader.connect() as conn:
            yield conn

    @contextmanager
    def write(self):
        """A Core connection in one transaction, taken in turn like `session()`; commits on success.
        For the hot paths (boot requests, rollout steps), where the ORM's unit of work was most of the cost."""
        with store_errors(self.given_url), self._turn, self.engine.begin() as conn:
            yield conn

    def close(self) -> None:
        self.engine.dispose()
