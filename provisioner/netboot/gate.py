"""The netboot gate: one pure function deciding what a booting node is handed, used by every route.

    decide(node, state, release, blocked, observed) -> NetbootDecision

The release is read through its typed view (`provisioner.releases.view.ReleaseView`), the node is
the spec's `Node`.

Actions:
    install  boot the node's install profile (reimage to the release)
    flash    boot the flasher with the components whose observed version differs from the pin
    hold     boot nothing destructive: the node runs a blocked version (and no re-provision is
             scheduled that would fix it), is quarantined, or its release pins a blocked version
    local    nothing to do: boot from the local disk
    unknown  the MAC is not in the inventory

A node running a blocked version is never handed an install config. No route ever flashes to a
blocked version.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # the view imports the spec's models only; the gate stays importable without them
    from provisioner.releases.view import ReleaseView
    from provisioner.spec.models import Node

Action = Literal["install", "flash", "hold", "local", "unknown"]

# Node states the pipeline sets before it power-cycles a node into PXE.
WANTS_FLASH = frozenset({"flashing", "reprovisioning"})
WANTS_INSTALL = frozenset({"installing", "reprovisioning"})
HOLD_STATES = frozenset({"quarantined", "held"})


@dataclass(frozen=True)
class FlashItem:
    name: str
    version: str
    from_version: str | None
    method: str
    image: dict  # {file, sha256, size}


@dataclass(frozen=True)
class NetbootDecision:
    action: Action
    reason: str
    node: str | None = None
    release_id: str | None = None
    profile: str | None = None
    components: tuple[FlashItem, ...] = field(default_factory=tuple)

    def log_line(self, mac: str) -> str:
        comps = ",".join(f"{c.name}:{c.from_version}->{c.version}" for c in self.components)
        return (f"netboot.decision mac={mac} node={self.node or '-'} action={self.action} "
                f"release={(self.release_id or '-')[:12]} components={comps or '-'} reason={self.reason!r}")


@dataclass(frozen=True)
class Blocked:
    component: str
    version: str
    reason: str
    model: str | None = None

    def applies(self, model: str, component: str, version: str | None) -> bool:
        return self.model in (None, model) and self.component == component and self.version == version


def release_blocklist(release: ReleaseView | None) -> list[Blocked]:
    """The deny-list frozen into a release: the global file plus every manifest's own entries."""
    if release is None:
        return []
    out = [Blocked(b.component, b.version, b.reason, b.model) for b in release.deny_list.blocked]
    for model, m in release.manifests.items():
        out += [Blocked(b.component, b.version, b.reason, model) for b in m.blocked]
    return out


def find_blocked(blocked: list[Blocked], model: str, component: str, version: str | None) -> Blocked | None:
    return next((b for b in blocked if b.applies(model, component, version)), None)


def decide(node: Node | None, state: str, release: ReleaseView | None, blocked: list[Blocked],
           observed: dict[str, str], installed_release: str | None = None) -> NetbootDecision:
    """Decide what `node` (the spec's node, or None for an unknown MAC) is handed now under `release`
    (its environment's, or None when the environment points at no release)."""
    if node is None:
        return NetbootDecision("unknown", "MAC not in the inventory")
    name, model = node.name, node.model
    release_id = release.id if release is not None else None
    if state in HOLD_STATES:
        return NetbootDecision("hold", f"node is {state}", name, release_id)
    if release is None:
        return NetbootDecision("local", f"environment {node.environment} points at no release", name)

    blocked = blocked + release_blocklist(release)
    pins = release.pins(model)  # in flashing order
    if pins is None:
        return NetbootDecision("hold", f"release has no manifest for model {model}", name, release_id)

    bad_pin = next((b for c in pins if (b := find_blocked(blocked, model, c.name, c.version))), None)
    if bad_pin:
        return NetbootDecision("hold", f"release pins blocked {bad_pin.component} {bad_pin.version}: "
                                       f"{bad_pin.reason}", name, release_id)

    running_blocked = next((b for comp, ver in sorted(observed.items())
                            if (b := find_blocked(blocked, model, comp, ver))), None)
    unknown = not observed
    todo = tuple(FlashItem(c.name, c.version, observed.get(c.name), c.method, c.image.model_dump())
                 for c in pins if observed.get(c.name) != c.version)

    if state in WANTS_FLASH | WANTS_INSTALL and todo and (state in WANTS_FLASH or running_blocked or unknown):
        why = (f"runs blocked {running_blocked.component} {running_blocked.version}; re-provisioning to the pins"
               if running_blocked else "firmware never reported; flashing to the pins" if unknown
               else f"{len(todo)} component(s) differ from the release")
        return NetbootDecision("flash", why, name, release_id, release.boot.flasher, todo)
    if running_blocked:
        return NetbootDecision("hold", f"runs blocked {running_blocked.component} {running_blocked.version}: "
                                       f"{running_blocked.reason}", name, release_id)
    if state in WANTS_INSTALL and installed_release != release_id:
        return NetbootDecision("install", f"reimage to release {release_id[:12]}", name, release_id,
                               node.boot_profile)
    return NetbootDecision("local", "nothing to do: firmware and image match the release"
                           if not todo else "firmware differs but no re-provision is scheduled", name, release_id)
