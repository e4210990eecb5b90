"""A frozen release read through the spec's own models: pins per model, nodes, profiles, policy.

The release document is canonical JSON (what the id hashes); code that reads it goes through
this one typed view instead of string keys into nested dicts. Build it once per release where the
work starts (`ReleaseView.of(release)`) and pass it down.

Releases frozen by an older version may carry keys the models no longer have; `_REMOVED` lists
them, and they are dropped on reading (the stored document, and so the id, never changes).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from provisioner.spec.models import (
    BootProfile,
    BootProfiles,
    DenyList,
    FirmwareComponent,
    FirmwareManifest,
    Inventory,
    Node,
    Policy,
)

# (path of a mapping in the document, key the models no longer have)
_REMOVED = ((("policy", "rollout"), "drift_action"),)


@dataclass(frozen=True)
class ReleaseView:
    id: str
    inventory: Inventory
    manifests: dict[str, FirmwareManifest]
    deny_list: DenyList
    boot: BootProfiles
    policy: Policy
    _nodes: dict[str, tuple[str, Node]] = field(default_factory=dict, repr=False, compare=False)
    _pins: dict[str, tuple[FirmwareComponent, ...]] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def of(cls, release) -> ReleaseView:
        """The view of a stored `Release` (anything with `.id` and `.document`)."""
        return cls.of_document(release.id, release.document)

    @classmethod
    def of_document(cls, release_id: str, document: dict) -> ReleaseView:
        doc = _without_removed(document)
        inventory = Inventory.model_validate(doc["inventory"])
        manifests = {k: FirmwareManifest.model_validate(v) for k, v in doc["manifests"].items()}
        nodes = {n.name: (r.name, n) for r in inventory.racks for n in r.nodes}
        pins = {model: tuple(sorted(m.components, key=lambda c: (c.order, c.name))) for model, m in manifests.items()}
        return cls(release_id, inventory, manifests, DenyList.model_validate(doc.get("deny_list") or {}),
                   BootProfiles.model_validate(doc["boot"]), Policy.model_validate(doc.get("policy") or {}),
                   nodes, pins)

    # -- what consumers ask ----------------------------------------------------------------------------
    @property
    def short(self) -> str:
        return self.id[:12]

    def pins(self, model: str) -> tuple[FirmwareComponent, ...] | None:
        """The model's pinned components in flashing order (order, then name); None: no manifest."""
        return self._pins.get(model)

    def node(self, name: str) -> Node | None:
        found = self._nodes.get(name)
        return found[1] if found else None

    def rack_of(self, name: str) -> str | None:
        found = self._nodes.get(name)
        return found[0] if found else None

    def nodes(self) -> list[tuple[str, Node]]:
        return list(self._nodes.values())

    def profile(self, name: str) -> BootProfile | None:
        return next((p for p in self.boot.profiles if p.name == name), None)

    def allowed(self, model: str) -> dict[str, list[str]]:
        m = self.manifests.get(model)
        return dict(m.allowed) if m else {}


def _without_removed(document: dict) -> dict:
    doc = document
    for path, key in _REMOVED:
        holder = doc
        for p in path:
            holder = holder.get(p) if isinstance(holder, dict) else None
        if isinstance(holder, dict) and key in holder:
            doc = _copy_path(doc, path)
            target = doc
            for p in path:
                target = target[p]
            del target[key]
    return doc


def _copy_path(doc: dict, path: tuple[str, ...]) -> dict:
    """A copy of `doc` whose mappings along `path` are copies too (the stored document stays as is)."""
    top = dict(doc)
    cur = top
    for p in path:
        cur[p] = dict(cur[p])
        cur = cur[p]
    return top
