"""plan and compliance as the base commit (39c0741) made them, from ORM rows: the reference the
faster versions (Core reads, memoised block look-ups, boot modes from the document) must equal."""

from __future__ import annotations

from dataclasses import replace

from provisioner.netboot.gate import find_blocked
from provisioner.operations.common import active_blocks, release_of
from provisioner.operations.nodes import NOT_COMPLIANT
from provisioner.plan import Flash, NodePlan, Observed, Plan, _flash_words, image_key, release_blocks
from provisioner.releases.view import ReleaseView


def observe(ctx, env):
    ctx.store.sync_nodes(ctx.spec)
    rows = {r.name: r for r in ctx.store.nodes(env)}
    views: dict[str, ReleaseView] = {}

    def installed_image(r):
        if not r.installed_release:
            return None
        if r.installed_release not in views:
            views[r.installed_release] = ReleaseView.of(ctx.store.get_release(r.installed_release))
        return image_key(views[r.installed_release], r.name)

    return [Observed(r.name, r.rack, r.model, r.environment, dict(r.observed or {}), r.installed_release,
                     installed_image(r), r.state, r.state_reason) for r in rows.values()]


def plan(ctx, env, unread=None):
    return make_plan(ReleaseView.of(release_of(ctx, env)), env, observe(ctx, env), active_blocks(ctx), unread=unread)


def boot_mode(release, node_name):
    node = release.node(node_name)
    return (node.firmware if node is not None else None) or "uefi"


def make_plan(release: ReleaseView, environment: str, observed: list[Observed], blocked: list,
              reimage: bool = True, unread: dict[str, str] | None = None) -> Plan:
    """Plan every observed node of `environment` against the release. `reimage=False` plans firmware only.

    `unread`: nodes whose BMC could not be read just now (node -> why); they are `unknown`, never
    planned from an older read.
    """
    unread = unread or {}
    everything = blocked + release_blocks(release)
    out = []
    for o in sorted(observed, key=lambda o: (o.rack, o.name)):
        if o.environment != environment:
            continue
        if o.name in unread:
            out.append(NodePlan(o.name, o.rack, o.model, "unknown", f"BMC not read: {unread[o.name]}"))
            continue
        comps = release.pins(o.model)
        if comps is None:
            out.append(NodePlan(o.name, o.rack, o.model, "hold", f"release has no manifest for {o.model}"))
            continue
        bad = next((b for c in comps if (b := find_blocked(everything, o.model, c.name, c.version))), None)
        if bad:
            out.append(NodePlan(o.name, o.rack, o.model, "hold",
                                f"release pins blocked {bad.component} {bad.version} ({bad.reason})"))
            continue
        allowed = release.allowed(o.model)
        unapproved = next((c for c in comps if c.name in allowed and c.version not in allowed[c.name]), None)
        if unapproved:
            out.append(NodePlan(o.name, o.rack, o.model, "hold",
                                f"{unapproved.name} {unapproved.version} is not on the allow-list"))
            continue
        if o.state == "maintenance":
            out.append(NodePlan(o.name, o.rack, o.model, "hold", f"in maintenance: {o.state_reason}"))
            continue
        if o.state == "needs-hands":  # no remote path: a person acts, then `node clear`
            out.append(NodePlan(o.name, o.rack, o.model, "hold", f"needs hands: {o.state_reason}; "
                                f"`provisioner node clear {o.name} --reason ...` once done"))
            continue
        flashes = tuple(Flash(c.name, o.firmware.get(c.name), c.version, c.method, c.image.sha256)
                        for c in comps if o.firmware.get(c.name) != c.version)
        running_blocked = next((b for comp, ver in sorted(o.firmware.items())
                                if (b := find_blocked(everything, o.model, comp, ver))), None)
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
        out.append(NodePlan(o.name, o.rack, o.model, action, reason, flashes))
    return Plan(release.id, environment, tuple(replace(n, boot_mode=boot_mode(release, n.node)) for n in out))


def compliance(ctx, envs: list[str] | None = None, unread: dict[str, str] | None = None) -> list[dict]:
    """Every node against its environment's release: pinned vs last observed, per component.

    A node in `unread` (its BMC could not be read just now) is neither compliant nor not: `None`.
    """
    unread = unread or {}
    out = []
    runtime_blocks = active_blocks(ctx)
    per_release: dict[str, tuple[dict, list]] = {}  # release -> (pins by model, deny-list)
    env_release: dict[str, str | None] = {}
    for r in ctx.store.nodes():
        if envs and r.environment not in envs:
            continue
        if r.environment not in env_release:
            env_release[r.environment] = ctx.store.current_release_id(r.environment)
        rid = env_release[r.environment]
        if rid and rid not in per_release:
            view = ReleaseView.of(ctx.store.get_release(rid))
            per_release[rid] = ({m: {c.name: c.version for c in view.pins(m)} for m in view.manifests},
                                release_blocks(view) + runtime_blocks)
        pins, blocked = per_release[rid] if rid else ({}, [])
        pins = pins.get(r.model, {})
        fw = r.observed or {}
        out.append({"node": r.name, "environment": r.environment, "rack": r.rack, "model": r.model,
                    "state": r.state, "release": rid, "node_release": r.release_id,
                    "compliant": None if r.name in unread else
                    bool(pins) and all(fw.get(k) == v for k, v in pins.items()) and r.release_id == rid
                    and r.state not in NOT_COMPLIANT,
                    "bmc_error": unread.get(r.name),
                    "components": {k: {"pinned": v, "observed": fw.get(k),
                                       "blocked": bool(find_blocked(blocked, r.model, k, fw.get(k)))}
                                   for k, v in pins.items()}})
    return out
