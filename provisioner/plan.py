"""The plan: desired (a release, through its typed view) vs observed (BMC inventory, callbacks) -> one
action per node. Pure.

Actions, in an operator's words:
    nothing       firmware at the pins and the release's image installed
    reflash       some components differ from their pins (which, from -> to)
    reimage       firmware fine, but the node does not run this release's image
    reprovision   both (also: firmware never read, or the node runs a blocked version)
    recover       the node failed or is presumed boot-looping: never `nothing`, whatever its BMC says
                  (a node in maintenance or needing hands is `hold`, with why)
    hold          nothing safe to do: the release pins a blocked or unapproved version
    unknown       the BMC could not be read just now: its firmware is unknown, so nothing is done

A plan never contains a flash to a blocked version, nor a flash of a component already at its pin.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from provisioner.netboot.gate import Blocked, find_blocked, release_blocklist
from provisioner.releases.view import ReleaseView


@dataclass(frozen=True)
class Observed:
    name: str
    rack: str
    model: str
    environment: str
    firmware: dict[str, str]  # component -> version, as the BMC last reported; {} if never read
    installed_release: str | None = None
    installed_image: str | None = None  # image_key() of what the installer wrote, if known
    state: str = ""  # its lifecycle state (provisioner/states.py) and why
    state_reason: str = ""


@dataclass(frozen=True)
class Flash:
    component: str
    from_version: str | None
    to_version: str
    method: str
    image_sha256: str


@dataclass(frozen=True)
class NodePlan:
    node: str
    rack: str
    model: str
    action: str
    reason: str
    flashes: tuple[Flash, ...] = ()
    boot_mode: str = "uefi"  # the node's spec `firmware`: how its BMC is asked to PXE-boot it

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Plan:
    release_id: str
    environment: str
    nodes: tuple[NodePlan, ...] = field(default_factory=tuple)

    @property
    def changes(self) -> tuple[NodePlan, ...]:
        return tuple(n for n in self.nodes if n.action not in ("nothing", "unknown"))

    @property
    def unknown(self) -> tuple[NodePlan, ...]:
        return tuple(n for n in self.nodes if n.action == "unknown")

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for n in self.nodes:
            out[n.action] = out.get(n.action, 0) + 1
        return out

    def as_dict(self) -> dict:
        return {"release": self.release_id, "environment": self.environment, "counts": self.counts(),
                "nodes": [n.as_dict() for n in self.nodes]}


def image_key(release: ReleaseView, node_name: str) -> str | None:
    """What a node's installed image is made of under a release: profile, kernel, initrd, rootfs, args.

    A release that changes only firmware keeps every node's image key, so its rollout reflashes
    without wiping a single disk.
    """
    node = release.node(node_name)
    prof = node and release.profile(node.boot_profile)
    if not prof:
        return None
    parts = [prof.name, prof.kernel_args] + [ref.sha256 if (ref := getattr(prof, k)) else ""
                                             for k in ("kernel", "initrd", "rootfs")]
    return "|".join(parts)


release_blocks = release_blocklist  # the deny-list frozen into a release (the netboot gate's reading of it)


def pinned_blocked(release: ReleaseView, blocked: list[Blocked]) -> list[tuple[str, str, str, Blocked]]:
    """Every (model, component, version) the release pins that a block (or its own deny-list) covers."""
    everything = blocked + release_blocks(release)
    return [(model, c.name, c.version, b) for model in sorted(release.manifests) for c in release.pins(model)
            if (b := find_blocked(everything, model, c.name, c.version))]


def make_plan(release: ReleaseView, environment: str, observed: list[Observed], blocked: list[Blocked],
              reimage: bool = True, unread: dict[str, str] | None = None) -> Plan:
    """Plan every observed node of `environment` against the release. `reimage=False` plans firmware only.

    `unread`: nodes whose BMC could not be read just now (node -> why); they are `unknown`, never
    planned from an older read.
    """
    unread = unread or {}
    everything = blocked + release_blocks(release)
    covered: dict[tuple, Blocked | None] = {}  # (model, component, version) -> its block: a fleet repeats them

    def block_of(model: str, component: str, version: str | None) -> Blocked | None:
        key = (model, component, version)
        if key not in covered:
            covered[key] = find_blocked(everything, model, component, version)
        return covered[key]

    out = []
    for o in sorted(observed, key=lambda o: (o.rack, o.name)):
        if o.environment != environment:
            continue
        mode = boot_mode(release, o.name)
        if o.name in unread:
            out.append(NodePlan(o.name, o.rack, o.model, "unknown", f"BMC not read: {unread[o.name]}", boot_mode=mode))
            continue
        comps = release.pins(o.model)
        if comps is None:
            out.append(NodePlan(o.name, o.rack, o.model, "hold", f"release has no manifest for {o.model}",
                                boot_mode=mode))
            continue
        bad = next((b for c in comps if (b := block_of(o.model, c.name, c.version))), None)
        if bad:
            out.append(NodePlan(o.name, o.rack, o.model, "hold",
                                f"release pins blocked {bad.component} {bad.version} ({bad.reason})", boot_mode=mode))
            continue
        allowed = release.allowed(o.model)
        unapproved = next((c for c in comps if c.name in allowed and c.version not in allowed[c.name]), None)
        if unapproved:
            out.append(NodePlan(o.name, o.rack, o.model, "hold",
                                f"{unapproved.name} {unapproved.version} is not on the allow-list", boot_mode=mode))
            continue
        if o.state == "maintenance":
            out.append(NodePlan(o.name, o.rack, o.model, "hold", f"in maintenance: {o.state_reason}", boot_mode=mode))
            continue
        if o.state == "needs-hands":  # no remote path: a person acts, then `node clear`
            out.append(NodePlan(o.name, o.rack, o.model, "hold", f"needs hands: {o.state_reason}; "
                                f"`provisioner node clear {o.name} --reason ...` once done", boot_mode=mode))
            continue
        flashes = tuple(Flash(c.name, o.firmware.get(c.name), c.version, c.method, c.image.sha256)
                        for c in comps if o.firmware.get(c.name) != c.version)
        running_blocked = next((b for comp, ver in sorted(o.firmware.items())
                                if (b := block_of(o.model, comp, ver))), None)
        image_stale = reimage and o.installed_release != release.id and (
            o.installed_image is None or o.installed_image != image_key(release, o.name))
        if o.state == "failed":
            action, reason = "recover", f"failed: {o.state_reason or 'no reason recorded'}"
        elif running_blocked:
            action = "reprovision"
            reason = f"runs blocked {running_blocked.component} {running_blocked.version} ({running_blocked.reason})"
        elif not o.firmware:
            action, reason = "reprovision", "firmware never read from the BMC"
        elif flashes and image_stale:
            action, reason = "reprovision", _flash_words(flashes) + "; reimage to this release"
        elif flashes:
            action, reason = "reflash", _flash_words(flashes)
        elif image_stale:
            action = "reimage"
            reason = f"runs image of {o.installed_release[:12] if o.installed_release else 'no release'}"
        else:
            action, reason = "nothing", "at the pins, image of this release"
        out.append(NodePlan(o.name, o.rack, o.model, action, reason, flashes, boot_mode=mode))
    return Plan(release.id, environment, tuple(out))


def boot_mode(release: ReleaseView, node_name: str) -> str:
    """A node's boot mode ("bios" | "uefi", the spec's `firmware` field; "uefi" if unset)."""
    return release.boot_mode(node_name) or "uefi"


def _flash_words(flashes: tuple[Flash, ...]) -> str:
    return ", ".join(f"{f.component} {f.from_version or '?'} → {f.to_version}" for f in flashes)


# -- saved plans (`plan ENV -o FILE`, then `apply FILE`) ----------------------------------------------
PLAN_FORMAT = "provisioner-plan/1"


def saved_plan(plan: Plan, unread: dict[str, str], observed: dict[str, dict]) -> dict:
    """What `plan -o FILE` writes: the release, the firmware every node was planned from, the actions."""
    return {"format": PLAN_FORMAT, **plan.as_dict(), "unreachable": dict(unread),
            "observed": {n.node: (None if n.node in unread else dict(observed.get(n.node) or {})) for n in plan.nodes}}


def stale_reasons(saved: dict, release_id: str, plan: Plan, unread: dict[str, str],
                  observed: dict[str, dict]) -> list[str]:
    """Why a saved plan no longer holds against a fresh plan and fresh BMC reads; [] if it does.

    A node unread when the plan was made stays out of it; a node read then must read the same now.
    """
    if saved.get("format") != PLAN_FORMAT:
        return [f"not a saved plan (format {saved.get('format')!r}, expected {PLAN_FORMAT!r})"]
    if saved["release"] != release_id:
        return [f"{saved['environment']} now points at release {release_id[:12]}, the plan was made for "
                f"{saved['release'][:12]}"]
    out = []
    fresh = {n.node: n for n in plan.nodes}
    for node, then in sorted(saved["observed"].items()):
        if then is None:
            continue
        if node in unread:
            out.append(f"{node}: BMC not read now ({unread[node]})")
        elif node not in fresh:
            out.append(f"{node}: no longer in {saved['environment']}")
        elif dict(observed.get(node) or {}) != then:
            changed = sorted(k for k in set(then) | set(observed.get(node) or {})
                             if then.get(k) != (observed.get(node) or {}).get(k))
            out.append(f"{node}: firmware changed since the plan ("
                       + ", ".join(f"{k} {then.get(k)} → {(observed.get(node) or {}).get(k)}" for k in changed) + ")")
    then_actions = {n["node"]: (n["action"], n["reason"]) for n in saved["nodes"] if saved["observed"].get(n["node"])}
    for node, (action, reason) in sorted(then_actions.items()):
        now = fresh.get(node)
        if now is not None and node not in unread and (now.action, now.reason) != (action, reason) \
                and not any(r.startswith(f"{node}:") for r in out):
            out.append(f"{node}: planned {action} ({reason}), now {now.action} ({now.reason})")
    return out
