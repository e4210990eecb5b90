"""The lifecycle tables: every edge has a reason, each event leads to one state, illegal edges raise."""

from __future__ import annotations

import inspect
import re

import pytest

from provisioner import states
from provisioner.states import (
    NODE_TRANSITIONS,
    ROLLOUT_TRANSITIONS,
    IllegalTransition,
    NodeState,
    RolloutStatus,
    next_node_state,
    next_rollout_status,
    node_sources,
)


def test_every_transition_is_written_under_a_one_line_reason():
    source = inspect.getsource(states)
    for call in re.finditer(r"^_edges\(", source, re.M):
        before = source[:call.start()].rstrip().splitlines()[-1]
        assert before.lstrip().startswith("#"), f"no reason above line {source[:call.start()].count(chr(10)) + 1}"
    table = source[source.index("ROLLOUT_TRANSITIONS: dict"):source.index("UNFINISHED =")]
    for line_no, line in enumerate(table.splitlines()):
        if line.strip().startswith("(_R."):
            above = [ln.strip() for ln in table.splitlines()[:line_no] if ln.strip()]
            assert above[-1].startswith("#") or above[-1].startswith("(_R."), line


def test_each_node_event_leads_to_one_state_whatever_it_left():
    for event in {e for _, e in NODE_TRANSITIONS}:
        _, target = node_sources(event)
        assert isinstance(target, NodeState)


def test_every_node_state_is_reachable_and_every_rollout_status_too():
    reached = set(NODE_TRANSITIONS.values()) | {NodeState.NEW}
    assert reached == set(NodeState)
    assert set(ROLLOUT_TRANSITIONS.values()) | {RolloutStatus.RUNNING} == set(RolloutStatus)


def test_a_node_in_maintenance_cannot_be_flashed_and_a_failed_one_is_cleared_to_ready():
    with pytest.raises(IllegalTransition, match="'maintenance' cannot take event 'flash'"):
        next_node_state("maintenance", "flash")
    assert next_node_state("failed", "clear") == NodeState.READY
    assert next_node_state("held", "release") == NodeState.READY
    assert next_node_state("failed", "needs_hands") == "needs-hands"
    with pytest.raises(IllegalTransition):
        next_node_state("active", "clear")


def test_a_finished_rollout_cannot_be_resumed_and_a_halted_one_only_by_an_operator_or_a_supersede():
    with pytest.raises(IllegalTransition):
        next_rollout_status("done", "resume")
    with pytest.raises(IllegalTransition):
        next_rollout_status("halted", "finish")
    assert next_rollout_status("halted", "resume") == RolloutStatus.RUNNING
    assert next_rollout_status("halted", "supersede") == RolloutStatus.SUPERSEDED
    assert next_rollout_status("running", "interrupt") == "interrupted"
