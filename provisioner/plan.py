"""The plan: desired (a release) vs observed (BMC inventory, callbacks) -> one action per node. Pure.

Actions, in an operator's words:
    nothing       firmware at the pins and the release's image installed
    reflash       some components differ from their pins (which, from -> to)
    reimage       firmware fine, but the node does not run this release's image
    reprovision   both (also: firmware never read, or the node runs a blocked version)
    recover       the node failed or is presumed boot-looping: never `nothing`, whatever its BMC says
                  (a node in maintenance or needing hands is `hold`, with why)
    hold          nothing safe to do: the release pins a blocked or unapproved version

A plan never contains a flash to a blocked version, nor a flash of a component already at its pin.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from provisioner.netboot.gate import Blocked, find_blocked, release_blocklist


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

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Plan:
    release_id: str
    environment: str
    nodes: tuple[NodePlan, ...] = field(default_factory=tuple)

    @property
    def changes(self) -> tuple[NodePlan, ...]:
        return tuple(n for n in self.nodes if n.action not in ("nothing",))

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for n in self.nodes:
            out[n.action] = out.get(n.action, 0) + 1
        return out

    def as_dict(self) -> dict:
        return {"release": self.release_id, "environment": self.environment, "counts": self.counts(),
                "nodes": [n.as_dict() for n in self.nodes]}


def image_key(release_doc: dict, node_name: str) -> str | None:
    """What a node's installed image is made of under a release: profile, kernel, initrd, rootfs, args.

    A release that changes only firmware keeps every node's image key, so its rollout reflashes
    without wiping a single disk.
    """
    node = next((n for r in release_doc["inventory"]["racks"] for n in r["nodes"] if n["name"] == node_name), None)
    prof = node and next((p for p in release_doc["boot"]["profiles"] if p["name"] == node["boot_profile"]), None)
    if not prof:
        return None
    parts = [prof["name"], prof["kernel_args"]] + [(prof.get(k) or {}).get("sha256", "") for k in ("kernel", "initrd", "rootfs")]
    return "|".join(parts)


def pins_by_model(release_doc: dict) -> dict[str, list[dict]]:
    return {model: sorted(m["components"], key=lambda c: (c["order"], c["name"]))
            for model, m in release_doc["manifests"].items()}


def blocked_pins(release_doc: dict, blocked: list[Blocked]) -> list[tuple[str, str, str, Blocked]]:
    """Every (model, component, version) the release pins that a block covers."""
    everything = blocked + release_blocklist(release_doc)
    out = []
    for model, comps in pins_by_model(release_doc).items():
        for c in comps:
            b = find_blocked(everything, model, c["name"], c["version"])
            if b:
                out.append((model, c["name"], c["version"], b))
    return out


def make_plan(release_id: str, release_doc: dict, environment: str, observed: list[Observed],
              blocked: list[Blocked], reimage: bool = True) -> Plan:
    """Plan every observed node of `environment` against the release. `reimage=False` plans firmware only."""
    everything = blocked + release_blocklist(release_doc)
    pins = pins_by_model(release_doc)
    allowed = {model: m.get("allowed") or {} for model, m in release_doc["manifests"].items()}
    out = []
    for o in sorted(observed, key=lambda o: (o.rack, o.name)):
        if o.environment != environment:
            continue
        comps = pins.get(o.model)
        if comps is None:
            out.append(NodePlan(o.name, o.rack, o.model, "hold", f"release has no manifest for {o.model}"))
            continue
        bad = next((b for c in comps if (b := find_blocked(everything, o.model, c["name"], c["version"]))), None)
        if bad:
            out.append(NodePlan(o.name, o.rack, o.model, "hold",
                                f"release pins blocked {bad.component} {bad.version} ({bad.reason})"))
            continue
        unapproved = next((c for c in comps if c["name"] in allowed[o.model]
                           and c["version"] not in allowed[o.model][c["name"]]), None)
        if unapproved:
            out.append(NodePlan(o.name, o.rack, o.model, "hold",
                                f"{unapproved['name']} {unapproved['version']} is not on the allow-list"))
            continue
        if o.state == "maintenance":
            out.append(NodePlan(o.name, o.rack, o.model, "hold", f"in maintenance: {o.state_reason}"))
            continue
        if o.state == "needs-hands":  # no remote path: a person acts, then `node clear`
            out.append(NodePlan(o.name, o.rack, o.model, "hold", f"needs hands: {o.state_reason}; "
                                f"`provisioner node clear {o.name} --reason ...` once done"))
            continue
        flashes = tuple(Flash(c["name"], o.firmware.get(c["name"]), c["version"], c["method"], c["image"]["sha256"])
                        for c in comps if o.firmware.get(c["name"]) != c["version"])
        running_blocked = next((b for comp, ver in sorted(o.firmware.items())
                                if (b := find_blocked(everything, o.model, comp, ver))), None)
        image_stale = reimage and o.installed_release != release_id and (
            o.installed_image is None or o.installed_image != image_key(release_doc, o.name))
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
        out.append(NodePlan(o.name, o.rack, o.model, action, reason, flashes))
    return Plan(release_id, environment, tuple(out))


def _flash_words(flashes: tuple[Flash, ...]) -> str:
    return ", ".join(f"{f.component} {f.from_version or '?'} → {f.to_version}" for f in flashes)
