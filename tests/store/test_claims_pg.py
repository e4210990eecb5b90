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

    real_live, ended = claims._live, []

    def live_after_r1n01_ends(conn, keys, holder):
        if node_key("r1n01") in keys and not ended:  # the node's last write commits just now
            with store.db.write() as c:
                c.execute(update(RolloutNodeRow).where(RolloutNodeRow.rollout_id == rid, RolloutNodeRow.node == "r1n01")
                          .values(status="done", finished_at=now()))
                worker.release(c, *first.keys)
            ended.append(True)
        return real_live(conn, keys, holder)

    monkeypatch.setattr(claims, "_live", live_after_r1n01_ends)
    second = claims.claim(store, worker, rid, policy, endpoints, by="worker a")
    assert ended
    monkeypatch.setattr(claims, "_live", real_live)
    assert not (isinstance(second, claims.Claimed) and second.node == "r1n01"), \
        f"a node that had just ended was taken over as a dead worker's: {second}"
    with store.db.read() as c:
        status = c.execute(select(RolloutNodeRow.status).where(RolloutNodeRow.rollout_id == rid,
                                                               RolloutNodeRow.node == "r1n01")).scalar()
    assert status == "done"
    assert node_key("r1n01") not in worker.held and bmc_key("127.0.0.10", 623) not in worker.held

    third = claims.claim(store, worker, rid, policy, endpoints, by="worker a")  # the rollout goes on
    assert isinstance(third, claims.Claimed) and third.node == "r1n02" and not third.takeover
