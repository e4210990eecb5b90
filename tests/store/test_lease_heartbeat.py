"""Leases and their heartbeat, on both stores: a lease let go while a heartbeat round runs stays let
go (a worker whose node ended must not keep that node's BMC from the next claim until expiry)."""

from __future__ import annotations

import time
from contextlib import contextmanager

from provisioner.errors import RolloutBusy
from provisioner.rollout.lease import Leases
from provisioner.store.db import Database
from provisioner.store.repo import Store


class _ReleaseOnFirstWrite:
    """The store's database, letting go of `key` just before the heartbeat's first write: what a
    node ending in another thread does while the heartbeat round is under way."""

    def __init__(self, db: Database, leases: Leases, key: str):
        self.db, self.leases, self.key, self.fired = db, leases, key, False

    def __getattr__(self, name):
        return getattr(self.db, name)

    @contextmanager
    def write(self):
        if not self.fired:
            self.fired = True
            time.sleep(0.002)  # the release's clock reads later than the round's start
            with self.db.write() as c:
                self.leases.release(c, self.key)
        with self.db.write() as c:
            yield c


def test_a_lease_let_go_during_a_heartbeat_round_is_not_renewed(store_url):
    store = Store(Database(store_url))
    try:
        worker = Leases(store, seconds=30, holder="host-a:1:aaaa")
        with store.db.write() as c:
            worker.take(c, "node:r1n01", "rollout 1: r1n01")
            worker.take(c, "bmc:127.0.0.9:623", "rollout 1: r1n01")
            worker.take(c, "worker:host-a:1:aaaa", "rollout worker")
        worker.db = _ReleaseOnFirstWrite(store.db, worker, "bmc:127.0.0.9:623")
        worker.renew()  # the node ended (its BMC let go) after this round began
        assert worker.db.fired
        assert not worker.lost
        assert set(worker.held) == {"node:r1n01", "worker:host-a:1:aaaa"}

        other = Leases(store, seconds=30, holder="host-b:2:bbbb")  # the next claim, by another worker
        try:
            with store.db.write() as c:
                other.take(c, "bmc:127.0.0.9:623", "rollout 2: r1n01")
        except RolloutBusy as e:
            raise AssertionError(f"the BMC's lease came back to life after it was let go: {e}") from None
        with store.db.write() as c:  # the leases still held were renewed, and are still fenced as ours
            worker.db = store.db
            worker.fence(c, "node:r1n01")
    finally:
        store.db.engine.dispose()


def test_a_heartbeat_while_a_claim_rolls_back_loses_nothing(store_url, monkeypatch):
    """A claim takes a node's lease, then finds its BMC taken by another worker and rolls back.
    A heartbeat round that runs right after the rollback, before the claim's thread has moved on,
    reads the node's row as it was (another holder's, let go): it must not call the lease lost
    (the worker exited "expired before their heartbeat" in the 300-node benchmark)."""
    from types import SimpleNamespace

    from sqlalchemy import event, insert

    from provisioner.rollout import claims
    from provisioner.spec.models import RolloutPolicy
    from provisioner.store.models import RolloutNodeRow, RolloutRow
    from provisioner.store.repo import now

    store = Store(Database(store_url))
    try:
        with store.db.write() as c:
            rid = c.execute(insert(RolloutRow).values(environment="production", release_id="f" * 64, kind="apply",
                                                      status="running", by="alice", created_at=now())
                            .returning(RolloutRow.id)).scalar()
            c.execute(insert(RolloutNodeRow).values(rollout_id=rid, node="r1n01", position=0, wave=0, rack="r1",
                                                    action="reflash", plan={}, status="pending"))
        earlier = Leases(store, seconds=30, holder="host-b:2:bbbb")  # an earlier rollout's holder, done
        with store.db.write() as c:
            earlier.take(c, "node:r1n01", "rollout 0: r1n01")
        earlier.release_all()
        worker = Leases(store, seconds=30, holder="host-a:1:aaaa")
        with store.db.write() as c:
            worker.take(c, "worker:host-a:1:aaaa", "rollout worker")

        real_take = Leases.take

        def bmc_taken_meanwhile(self, conn, key, purpose):
            if key.startswith("bmc:"):
                raise RolloutBusy(f"{key} is busy: taken by another worker")
            return real_take(self, conn, key, purpose)

        monkeypatch.setattr(Leases, "take", bmc_taken_meanwhile)
        beats = []

        def heartbeat_now(_session, *_):
            try:
                worker.renew()
                beats.append("ok")
            except Exception as e:  # LeaseLost: recorded for the assertion below
                beats.append(repr(e))

        event.listen(store.db._factory, "after_rollback", heartbeat_now)
        endpoints = {"r1n01": SimpleNamespace(address="127.0.0.10", port=623)}
        policy = RolloutPolicy(canary=1, wave_size=1, max_concurrency=1, max_unavailable_per_rack=1)
        got = claims.claim(store, worker, rid, policy, endpoints, by="worker a")
        event.remove(store.db._factory, "after_rollback", heartbeat_now)

        assert got == claims.BUSY
        assert beats == ["ok"], beats
        assert not worker.lost
        assert set(worker.held) == {"worker:host-a:1:aaaa"}
    finally:
        store.db.engine.dispose()
