"""The plain results operations return: what the CLI prints and the operator API sends as JSON.

Each has `as_dict()` (the JSON shape, the same for `--json` and the API) and reads like the dict
it used to be (`result["marked"]`), so callers written against the dicts keep working.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


class _Readable:
    def as_dict(self) -> dict:
        return asdict(self)

    def __getitem__(self, key: str):
        return getattr(self, key)


@dataclass
class BlockResult(_Readable):
    created: bool
    component: str
    version: str
    marked: list[str] = field(default_factory=list)
    rollouts_halting: list[int] = field(default_factory=list)


@dataclass
class UnblockResult(_Readable):
    component: str
    version: str
    lifted: int
    released: list[str] = field(default_factory=list)


@dataclass
class UnblockRequest(_Readable):
    """A request to lift a block, waiting for another approver's confirmation."""

    component: str
    version: str
    model: str | None
    reason: str
    requested_by: str
    audit_seq: int
    requester_account: int | None = None
    created: bool = True


@dataclass
class ApprovalResult(_Readable):
    release: str
    approver: str
    changed: bool  # recorded (or withdrawn) now; False: already so
    withdrawn: bool
    approvers: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return self.changed


@dataclass
class PromoteResult(_Readable):
    environment: str
    release: str
    previous: str | None
