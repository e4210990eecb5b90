"""The PostgreSQL pool without a ping per checkout: a pooled connection the server dropped (a
restart, an administrator's pg_terminate_backend) is replaced when drawn, not handed to an
operation that then fails."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select, text

from provisioner.store.db import Database
from provisioner.store.models import LeaseRow


@pytest.fixture
def db(pg_cluster, request):
    name = f"pool_{id(request) & 0xffffff:x}"
    db = Database(pg_cluster.create_database(name, template="prov_template"))
    yield db
    db.close()
    pg_cluster.drop_database(name)


def test_connections_the_server_dropped_are_replaced_when_drawn(db, pg_cluster):
    pids = set()
    for _ in range(3):  # a read and a write leave their connections in the pool
        with db.read() as c:
            pids.add(c.execute(text("SELECT pg_backend_pid()")).scalar())
        with db.write() as c:
            pids.add(c.execute(text("SELECT pg_backend_pid()")).scalar())
    pg_cluster.sql(*(f"SELECT pg_terminate_backend({p})" for p in pids))
    time.sleep(0.2)  # the backends are gone and their sockets closed

    with db.read() as c:  # no "server closed the connection unexpectedly"
        assert c.execute(select(LeaseRow.key)).all() == []
        assert c.execute(text("SELECT pg_backend_pid()")).scalar() not in pids
    with db.write() as c:
        assert c.execute(text("SELECT pg_backend_pid()")).scalar() not in pids


def test_reads_run_outside_a_transaction_and_writes_inside_one(db):
    from psycopg.pq import TransactionStatus

    def status(c):
        c.execute(text("SELECT 1"))
        return c.connection.dbapi_connection.info.transaction_status

    with db.read() as c:  # autocommit: no BEGIN and no ROLLBACK round trip around a read
        assert status(c) == TransactionStatus.IDLE
    with db.write() as c:
        assert status(c) == TransactionStatus.INTRANS
    with db.read() as c:  # the setting goes with the checkout, not with the pooled connection
        assert status(c) == TransactionStatus.IDLE
