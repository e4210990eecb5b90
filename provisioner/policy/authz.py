"""The authorisation matrix: which role may do what, and the two-person rules. Pure: facts in, verdict out.

Written once, here; the README's table is this one. Roles are cumulative (each row lists the
lowest role allowed). Direct store access (the installation's root on the server host) passes
the matrix, but it is not a person: it can neither approve nor confirm an unblock.

| action                 | viewer | operator | approver | admin | and also                                        |
|------------------------|--------|----------|----------|-------|-------------------------------------------------|
| view                   | yes    | yes      | yes      | yes   |                                                 |
| build                  |        | yes      | yes      | yes   |                                                 |
| promote to staging     |        | yes      | yes      | yes   |                                                 |
| apply                  |        | yes      | yes      | yes   |                                                 |
| approve                |        |          | yes      | yes   | not the release's author                        |
| promote to production  |        | yes      | yes      | yes   | the staging gate passes                         |
| block                  |        | yes      | yes      | yes   | one person: on-call must act fast               |
| request an unblock     |        | yes      | yes      | yes   |                                                 |
| confirm an unblock     |        |          | yes      | yes   | not the person who requested it                 |
| roll back to previous  |        | yes      | yes      | yes   | one person                                      |
| roll back to another   |        | yes      | yes      | yes   | the release was active there before, or passes the gate |
| manage users           |        |          |          | yes   |                                                 |
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from provisioner.auth.identity import Role


class Action(StrEnum):
    VIEW = "view"
    BUILD = "build"
    PROMOTE_STAGING = "promote to staging"
    APPLY = "apply"
    APPROVE = "approve"
    PROMOTE_PRODUCTION = "promote to production"
    BLOCK = "block"
    UNBLOCK_REQUEST = "request an unblock"
    UNBLOCK_CONFIRM = "confirm an unblock"
    ROLLBACK_PREVIOUS = "roll back to previous"
    ROLLBACK_TO = "roll back to another release"
    MANAGE_USERS = "manage users"


_RANK = {Role.VIEWER: 0, Role.OPERATOR: 1, Role.APPROVER: 2, Role.ADMIN: 3}

# The lowest role allowed each action (roles are cumulative)
LOWEST_ROLE: dict[Action, Role] = {
    Action.VIEW: Role.VIEWER,
    Action.BUILD: Role.OPERATOR,
    Action.PROMOTE_STAGING: Role.OPERATOR,
    Action.APPLY: Role.OPERATOR,
    Action.APPROVE: Role.APPROVER,
    Action.PROMOTE_PRODUCTION: Role.OPERATOR,
    Action.BLOCK: Role.OPERATOR,
    Action.UNBLOCK_REQUEST: Role.OPERATOR,
    Action.UNBLOCK_CONFIRM: Role.APPROVER,
    Action.ROLLBACK_PREVIOUS: Role.OPERATOR,
    Action.ROLLBACK_TO: Role.OPERATOR,
    Action.MANAGE_USERS: Role.ADMIN,
}

# Actions that need a person distinct from another one: they mean nothing done by the store's root
NEEDS_A_PERSON = frozenset({Action.APPROVE, Action.UNBLOCK_CONFIRM})


@dataclass(frozen=True)
class Who:
    """The acting principal as the matrix sees it. `account_id` None = the store's root."""

    username: str
    role: Role | None
    account_id: int | None = None

    @property
    def is_root(self) -> bool:
        return self.account_id is None


@dataclass(frozen=True)
class Facts:
    """What the two-person and rollback rules look at; only the ones an action needs are read."""

    other: Who | None = None            # approve: the release's author; confirm: who requested the unblock
    gate_passes: bool | None = None     # promote to production, roll back to another
    was_active_before: bool | None = None  # roll back to another: was it active in that environment


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str = ""
    by_role: bool = False  # refused for the role alone (HTTP 403), not by a rule about this case


def same_person(a: Who, b: Who) -> bool:
    """Compared on account ids when both have one, and always on normalised names."""
    return (a.account_id is not None and a.account_id == b.account_id) or a.username == b.username


def decide(action: Action, who: Who, facts: Facts | None = None) -> Decision:
    """May `who` do `action`, given `facts`? One line of why when not."""
    facts = facts or Facts()
    if who.is_root:
        if action in NEEDS_A_PERSON:
            return Decision(False, f"{action} needs an authenticated account, not direct store access: "
                                   f"use a password or an API token")
    elif who.role is None or _RANK[who.role] < _RANK[LOWEST_ROLE[action]]:
        return Decision(False, f"{who.username} ({who.role or 'no role'}) may not {action}; "
                               f"it needs the {LOWEST_ROLE[action]} role", by_role=True)
    if action == Action.APPROVE and facts.other is not None and same_person(who, facts.other):
        return Decision(False, f"{who.username} built this release and cannot approve it; ask someone else")
    if action == Action.UNBLOCK_CONFIRM and facts.other is not None and same_person(who, facts.other):
        return Decision(False, f"{who.username} requested this unblock and cannot confirm it; "
                               f"another approver must")
    if action == Action.PROMOTE_PRODUCTION and facts.gate_passes is False:
        return Decision(False, "the release has not passed the staging gate")
    if action == Action.ROLLBACK_TO and not (facts.was_active_before or facts.gate_passes):
        return Decision(False, "that release was never active in this environment and has not passed "
                               "the staging gate; promote it through staging instead")
    return Decision(True)
