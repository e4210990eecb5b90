"""The staging gate: may a release go to production? Pure: evidence in, verdict out.

The rules a release is judged by are not its own alone: `rules_in_force` takes the strictest of
the release's staging_gate, the one of the release active in production, and the site's floor
(DATA/site.yaml `gate_floor:`), so a release cannot lower the bar it is measured against. The
staging environment is the site's, never the release's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta

from provisioner.spec.models import StagingGate

DEFAULT_STAGING = "staging"
# Stricter means more: a higher number of each of these is harder to meet
NUMERIC_RULES = ("min_nodes", "soak_seconds", "success_ratio", "approvals")


def rules_in_force(own: dict, in_production: dict | None, floor: dict | None) -> tuple[dict, dict]:
    """(the rules in force, which source set each rule): each number the strictest of the three.

    The environment is the floor's if it names one, else the default staging environment: a
    release that names production as its own staging environment gains nothing.
    """
    rules, source = {}, {}
    for key in NUMERIC_RULES:
        candidates = [("release", own.get(key)), ("production release", (in_production or {}).get(key)),
                      ("site floor", (floor or {}).get(key))]
        name, value = max(((n, v) for n, v in candidates if v is not None), key=lambda nv: nv[1])
        rules[key], source[key] = value, name
    rules["environment"] = staging_environment(floor)
    source["environment"] = "site floor" if (floor or {}).get("environment") else "default"
    return rules, source


def staging_environment(floor: dict | None) -> str:
    """Where releases are proven: the site's choice (its floor), never a release's."""
    return (floor or {}).get("environment") or DEFAULT_STAGING


@dataclass(frozen=True)
class StagingNode:
    name: str
    release_id: str | None  # release it last verified at
    state: str
    healthy_since: datetime | None


@dataclass(frozen=True)
class GateVerdict:
    release_id: str
    ok: bool
    facts: dict = field(default_factory=dict)
    missing: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        return asdict(self)


def evaluate(release_id: str, author: str, policy: StagingGate, nodes: list[StagingNode], outcomes: dict[str, int],
             approvers: list[str], now: datetime) -> GateVerdict:
    """`policy` is the release's staging_gate; `outcomes` counts staging rollout nodes done/failed."""
    soak = timedelta(seconds=policy.soak_seconds)
    active = [n for n in nodes if n.release_id == release_id and n.state == "active"]
    soaked = [n for n in active if n.healthy_since and now - n.healthy_since >= soak]
    done, failed = outcomes.get("done", 0), outcomes.get("failed", 0)
    ratio = done / (done + failed) if done + failed else 0.0
    distinct = sorted({a for a in approvers if a != author})
    missing = []
    if len(active) < policy.min_nodes:
        missing.append(f"active on {len(active)} of the {policy.min_nodes} staging nodes required")
    if len(soaked) < policy.min_nodes:
        left = [max(0.0, (soak - (now - n.healthy_since)).total_seconds()) for n in active if n.healthy_since]
        wait = f"; {min(left):.0f}s to go" if left and len(active) >= policy.min_nodes else ""
        missing.append(f"{len(soaked)} staging node(s) healthy for the {policy.soak_seconds:.0f}s soak, "
                       f"{policy.min_nodes} required{wait}")
    if done + failed == 0 or ratio < policy.success_ratio:
        missing.append(f"success ratio {ratio:.2f} on staging ({done} done, {failed} failed), "
                       f"{policy.success_ratio:.2f} required")
    if len(distinct) < policy.approvals:
        missing.append(f"{len(distinct)} of {policy.approvals} approvals from people other than the author "
                       f"({author})")
    facts = {"active_nodes": [n.name for n in active], "soaked_nodes": [n.name for n in soaked],
             "done": done, "failed": failed, "success_ratio": round(ratio, 3), "approvers": distinct,
             "author": author, "policy": policy.model_dump(mode="json")}
    return GateVerdict(release_id, not missing, facts, tuple(missing))
