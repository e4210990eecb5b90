"""What a booting node may report, as pydantic models: types, sizes, no unknown keys; and the
limits its request must fit (body size, JSON depth) before anything parses it.

Nodes are untrusted (anyone on the provisioning network can post): a body that is not exactly
one of these reports is a 400, never a 500.
"""

from __future__ import annotations

import json
import re
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from provisioner.errors import BadRequest, BodyTooLarge
from provisioner.netboot.limits import Limits

Digest = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
ReleaseId = Annotated[str, StringConstraints(max_length=64)]
Line = Annotated[str, StringConstraints(max_length=1024)]
Word = Annotated[str, StringConstraints(max_length=64)]


class Report(BaseModel):
    """Fields every report may carry. `release` and `images`, when given, must equal the boot's."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    event: Word | None = None
    release: ReleaseId | None = None
    images: list[Digest] | None = Field(default=None, max_length=32)
    message: Line | None = None
    step: Word | None = None


class Progress(Report):
    percent: Annotated[int, Field(ge=0, le=100)] | None = None


class Installed(Report):
    release: ReleaseId  # the installer says what it wrote


class Flashed(Report):
    release: ReleaseId
    # recorded with the event only: the rollout's fresh BMC read decides what the node runs
    firmware: dict[Word, Word] | None = Field(default=None, max_length=32)


class Failed(Report):
    error: Line = "no reason given"


class Empty(Report):
    pass


REPORTS: dict[str, type[Report]] = {
    "started": Progress, "progress": Progress, "held": Empty, "booted": Empty,
    "installed": Installed, "flashed": Flashed, "failed": Failed,
}
_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"')
_BRACKETS = re.compile(rb"[\[\]{}]")


def json_body(raw: bytes, limits: Limits) -> dict:
    """The request body as a JSON object; BadRequest (400) for anything else, BodyTooLarge (413)."""
    if len(raw) > limits.body_bytes:
        raise BodyTooLarge(f"body of {len(raw)} bytes; at most {limits.body_bytes}")
    if not raw.strip():
        return {}
    depth = deepest = 0
    for m in _BRACKETS.finditer(_STRINGS.sub(b"", raw)):  # depth counted before the parser recurses
        depth += 1 if m.group() in (b"[", b"{") else -1
        deepest = max(deepest, depth)
        if deepest > limits.json_depth:
            raise BadRequest(f"JSON nested deeper than {limits.json_depth}")
    try:
        body = json.loads(raw, parse_constant=_no_constant)
    except (ValueError, RecursionError) as e:
        raise BadRequest(f"body is not JSON: {str(e)[:80]}") from None
    if not isinstance(body, dict):
        raise BadRequest(f"body must be a JSON object, not {type(body).__name__}")
    return body


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")  # RFC 8259 §6: NaN and Infinity are not numbers


def parse_report(event: str, body: dict) -> Report:
    model = REPORTS.get(event)
    if model is None:
        raise BadRequest(f"unknown callback event {event[:32]!r}; one of {sorted(REPORTS)}")
    try:
        return model.model_validate(body)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise BadRequest(f"{event} report: {where}: {first['msg']}") from None
