"""The authorisation matrix, cell by cell, on the pure function; then the two-person and rollback rules.

The expected table is written out here again, by hand, from the issue: a cell changed in the code
without changing it here fails.
"""

from __future__ import annotations

import pytest

from provisioner.auth.identity import Role
from provisioner.policy.authz import LOWEST_ROLE, Action, Facts, Who, decide

V, OP, P, A = Role.VIEWER, Role.OPERATOR, Role.APPROVER, Role.ADMIN
EXPECTED = {  # action: roles allowed (with facts that satisfy its rules)
    Action.VIEW: {V, OP, P, A},
    Action.BUILD: {OP, P, A},
    Action.PROMOTE_STAGING: {OP, P, A},
    Action.APPLY: {OP, P, A},
    Action.APPROVE: {P, A},
    Action.PROMOTE_PRODUCTION: {OP, P, A},
    Action.BLOCK: {OP, P, A},
    Action.UNBLOCK_REQUEST: {OP, P, A},
    Action.UNBLOCK_CONFIRM: {P, A},
    Action.ROLLBACK_PREVIOUS: {OP, P, A},
    Action.ROLLBACK_TO: {OP, P, A},
    Action.MANAGE_USERS: {A},
}
SATISFIED = Facts(other=Who("someone-else", Role.OPERATOR, 2), gate_passes=True, was_active_before=True)
CELLS = [(action, role) for action in Action for role in Role]


def test_the_expected_table_covers_every_action_of_the_code():
    assert set(EXPECTED) == set(Action) == set(LOWEST_ROLE)


@pytest.mark.parametrize("action, role", CELLS, ids=[f"{a.name}-{r}" for a, r in CELLS])
def test_each_cell_of_the_matrix(action, role):
    d = decide(action, Who("pat", role, 1), SATISFIED)
    assert d.allowed is (role in EXPECTED[action]), d.reason
    if not d.allowed:
        assert d.by_role and d.reason == f"pat ({role}) may not {action}; it needs the {LOWEST_ROLE[action]} role"


@pytest.mark.parametrize("action", list(Action), ids=[a.name for a in Action])
def test_direct_store_access_may_do_anything_but_approve_or_confirm(action):
    d = decide(action, Who("root@host (local store)", None, None), SATISFIED)
    assert d.allowed is (action not in (Action.APPROVE, Action.UNBLOCK_CONFIRM)), d.reason


@pytest.mark.parametrize("author", [Who("alice", Role.APPROVER, 7), Who("alice", None, None), Who("other", None, 7)],
                         ids=["same-account", "same-name-no-account", "same-account-other-name"])
def test_the_author_cannot_approve(author):
    d = decide(Action.APPROVE, Who("alice", Role.APPROVER, 7), Facts(other=author))
    assert not d.allowed and "built this release and cannot approve it" in d.reason


def test_unblocking_needs_a_second_person():
    requester = Who("dana", Role.APPROVER, 4)
    assert not decide(Action.UNBLOCK_CONFIRM, requester, Facts(other=requester)).allowed
    assert decide(Action.UNBLOCK_CONFIRM, Who("erin", Role.APPROVER, 5), Facts(other=requester)).allowed
    assert not decide(Action.UNBLOCK_CONFIRM, Who("olga", Role.OPERATOR, 6), Facts(other=requester)).allowed


def test_blocking_and_rolling_back_to_the_previous_release_are_one_person_actions():
    for action in (Action.BLOCK, Action.ROLLBACK_PREVIOUS):
        assert decide(action, Who("oncall", Role.OPERATOR, 9)).allowed


@pytest.mark.parametrize("was_active, passes, allowed", [
    (True, False, True), (False, True, True), (False, False, False), (None, None, False)])
def test_rollback_to_another_release_needs_it_active_there_before_or_through_the_gate(was_active, passes, allowed):
    d = decide(Action.ROLLBACK_TO, Who("oncall", Role.OPERATOR, 9),
               Facts(was_active_before=was_active, gate_passes=passes))
    assert d.allowed is allowed
    if not allowed:
        assert "never active in this environment and has not passed the staging gate" in d.reason


def test_promoting_to_production_needs_the_gate_even_for_an_admin():
    assert not decide(Action.PROMOTE_PRODUCTION, Who("root", Role.ADMIN, 1), Facts(gate_passes=False)).allowed
