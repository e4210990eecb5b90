"""Opening the store (SQLite with WAL by default, any SQLAlchemy URL) and migrating its schema."""

from __future__ import annotations

import threading
from contextlib import contextmanager, nullcontext
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from provisioner.errors import StoreError

MIGRATIONS = Path(__file__).parent / "migrations"


def default_url(data_dir: Path) -> str:
    return f"sqlite:///{Path(data_dir).resolve() / 'provisioner.db'}"


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
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
    return create_engine(url, pool_pre_ping=True)


def migrate(engine: Engine) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


class Database:
    """An engine plus a session factory; `session()` commits on success and rolls back on error."""

    def __init__(self, url: str):
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        try:
            self.engine = make_engine(url)
            migrate(self.engine)
        except SQLAlchemyError as e:
            raise StoreError(f"cannot open the store at {url}: {e.__class__.__name__}: {e.orig if hasattr(e, 'orig') else e}") from None
        self._factory = sessionmaker(self.engine, expire_on_commit=False)
        self.url = url
        # SQLite has one writer at a time. Threads of one process take turns on a lock (a fast
        # hand-over) instead of SQLite's busy handler, which sleeps up to 100 ms per retry and
        # collapsed a 200-client boot storm to 57 scripts/s.
        self._turn = threading.RLock() if url.startswith("sqlite") else nullcontext()

    @contextmanager
    def session(self):
        with self._turn:
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
        """A Core connection for reads only: no turn to wait for (WAL readers never block), no commit."""
        with self.engine.connect() as conn:
            yield conn

    @contextmanager
    def write(self):
        """A Core connection in one transaction, taken in turn like `session()`; commits on success.
        For the hot paths (boot requests, rollout steps), where the ORM's unit of work was most of the cost."""
        with self._turn, self.engine.begin() as conn:
            yield conn

    def close(self) -> None:
        self.engine.dispose()
