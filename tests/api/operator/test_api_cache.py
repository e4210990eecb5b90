"""The status snapshot shared by pollers (api/operator/cache.py): computed once while nothing
changes, recomputed when the store's version moves, never served older than its bound."""

from __future__ import annotations

import time

from provisioner.api.operator.cache import Snapshots, TokenCache


def test_an_unchanged_version_keeps_the_answer_and_a_new_one_recomputes_it():
    computed, version = [], [1]

    def compute():
        computed.append(version[0])
        return f"answer {version[0]}"

    snaps = Snapshots(ttl=0.05)
    assert snaps.get("k", compute, lambda: version[0]) == "answer 1"
    for _ in range(5):
        time.sleep(0.06)
        assert snaps.get("k", compute, lambda: version[0]) == "answer 1"
    assert computed == [1]
    version[0] = 2
    time.sleep(0.06)
    snaps.get("k", compute, lambda: version[0])  # the stale answer, while it recomputes
    deadline = time.monotonic() + 30
    while snaps.get("k", compute, lambda: version[0]) != "answer 2":
        assert time.monotonic() < deadline, "never recomputed"
        time.sleep(0.01)
    assert computed == [1, 2]


def test_after_a_long_idle_the_answer_is_computed_afresh_not_served_stale():
    n = [0]

    def compute():
        n[0] += 1
        return n[0]

    snaps = Snapshots(ttl=0.01)
    assert snaps.get("k", compute) == 1
    time.sleep(0.15)  # > 10 ttl
    assert snaps.get("k", compute) == 2


def test_a_remembered_token_expires():
    tokens = TokenCache(ttl=0.05)
    tokens.put("prv_x", "account")
    assert tokens.get("prv_x") == "account" and tokens.get("prv_y") is None
    time.sleep(0.06)
    assert tokens.get("prv_x") is None
