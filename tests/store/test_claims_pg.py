"""Claims on PostgreSQL, where each statement of a claim sees the store as of its own start (READ
COMMITTED): a node that ends between the claim's read of the nodes and its read of their leases
must not look like a dead worker's node and be taken over (it was run again, marked running after
it was done, and its worker then let go of the lease the takeover held: a lone worker exited with
"lease node:… expired or was taken over" mid-rollout)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from sqlalchemy import insert, select, update

from provisioner.rollout import claims
from provisioner.rollout.lease import Leases, bmc_key, node_key
from provisioner.spec.models import RolloutPolicy
from provisioner.store.db import Database
from provisioner.store.models import RolloutNodeRow, RolloutRow
from provisioner.store.repo import Store, now

NODES = ["r1n01", "r1n02", "r1n03"]


@pytest.fixture
def store(pg_cluster, request):
    name = f"claims_{id(request) & 0xffffff:x}"
    store = Store(Database(pg_cluster.create_database(name, template="prov_template")))
    yield store
    store.db.engine.dispose()
    pg_cluster.drop_database(name)


def test_a_node_ending_while_a_claim_looks_is_not_taken_over(store, monkeypatch):
    with store.db.write() as c:
        rid = c.execute(insert(RolloutRow).values(environment="production", release_id="f" * 64, kind="apply",
                                                  status="running", by="alice", created_at=now())
                        .returning(RolloutRow.id)).scalar()
        for i, node in enumerate(NODES):
            c.execute(insert(RolloutNodeRow).values(rollout_id=rid, node=node, position=i, wave=0, rack="r1",
                                                    action="reflash", plan={}, status="pending"))
    endpoints = {n: SimpleNamespace(address=f"127.0.0.{i + 10}", port=623) for i, n in enumerate(NODES)}
    policy = RolloutPolicy(canary=1, wave_size=3, max_concurrency=1, max_unavailable_per_rack=1)
    worker = Leases(store, seconds=30)
    first = claims.claim(store, worker, rid, policy, endpoints, by="worker a")
    assert isinstance(first, claims.Claimed) and first.node == "r1n01" and not first.takeover

    real_live, ended = claims._live_claims, []

    def live_after_r1n01_ends(conn, holder):
        if not ended:  # the node's last write commits just now, between the claim's two reads
            with store.db.write() as c:
                c.execute(update(RolloutNodeRow).where(RolloutNodeRow.rollout_id == rid, RolloutNodeRow.node == "r1n01")
                          .values(status="done", finished_at=now()))
                worker.release(c, *first.keys)
            ended.append(True)
        return real_live(conn, holder)

    monkeypatch.setattr(claims, "_live_claims", live_after_r1n01_ends)
    second = claims.claim(store, worker, rid, policy, endpoints, by="worker a")
    assert ended
    monkeypatch.setattr(claims, "_live_claims", real_live)
    assert not (isinstance(second, claims.Claimed) and second.node == "r1n01"), \
        f"a node that had just ended was taken over as a dead worker's: {second}"
    with store.db.read() as c:
        status = c.execute(select(RolloutNodeRow.status).where(RolloutNodeRow.rollout_id == rid,
                                                               RolloutNodeRow.node == "r1n01")).scalar()
    assert status == "done"
    assert node_key("r1n01") not in worker.held and bmc_key("127.0.0.10", 623) not in worker.held

    third = claims.claim(store, worker, rid, policy, endpoints, by="worker a")  # the rollout goes on
    assert isinstance(third, claims.Claimed) and third.node == "r1n02" and not third.takeover


def test_one_claim_fills_free_slots_within_every_limit(store):
    """A worker with free slots claims several nodes in one transaction; the limits hold inside it:
    the concurrency, the nodes per rack, and one operation per BMC (r2n01 and r2n02 share one)."""
    nodes = ["r1n01", "r1n02", "r1n03", "r2n01", "r2n02", "r2n03"]
    with store.db.write() as c:
        rid = c.execute(insert(RolloutRow).values(environment="production", release_id="f" * 64, kind="apply",
                                                  status="running", by="alice", created_at=now())
                        .returning(RolloutRow.id)).scalar()
        for i, node in enumerate(nodes):
            c.execute(insert(RolloutNodeRow).values(rollout_id=rid, node=node, position=i, wave=0, rack=node[:2],
                                                    action="reflash", plan={}, status="pending"))
    octet = {"r1n01": 10, "r1n02": 11, "r1n03": 12, "r2n01": 20, "r2n02": 20, "r2n03": 22}
    endpoints = {n: SimpleNamespace(address=f"127.0.0.{octet[n]}", port=623) for n in nodes}
    policy = RolloutPolicy(canary=1, wave_size=6, max_concurrency=4, max_unavailable_per_rack=2)  # all in wave 0 here
    worker = Leases(store, seconds=30)

    got = claims.claim_many(store, worker, rid, policy, endpoints, by="worker a", want=10)
    assert [g.node for g in got] == ["r1n01", "r1n02", "r2n01", "r2n03"]
    assert set(worker.held) == {k for g in got for k in g.keys}
    assert claims.claim_many(store, worker, rid, policy, endpoints, by="worker b", want=10) == claims.BUSY
    with store.db.read() as c:
        running = set(c.execute(select(RolloutNodeRow.node).where(RolloutNodeRow.rollout_id == rid,
                                                                  RolloutNodeRow.status == "running")).scalars())
    assert running == {"r1n01", "r1n02", "r2n01", "r2n03"}
