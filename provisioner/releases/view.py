"""A frozen release read through the spec's own models: pins per model, nodes, profiles, policy.

The release document is canonical JSON (what the id hashes); code that reads it goes through
this one typed view instead of string keys into nested dicts: plan, the staging gate, the netboot
gate, template rendering and the rollout engine. `ReleaseView.of(release)` hands out one view per
release id (the id is the document's digest, so a view never goes stale): the boot routes ask for
it per request and validate the inventory once, not per boot.

Releases frozen by an older version may carry keys the models no longer have; `_REMOVED` lists
them, and they are dropped on reading (the stored document, and so the id, never changes).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from functools import cached_property

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
_CACHED = 16  # views kept by `of`: the releases in force in a few environments, and their predecessors


class ReleaseView:
    """One frozen release as typed parts; each part is validated on first use (a plan of 10,000
    nodes needs the inventory, a compliance report only the pins)."""

    def __init__(self, release_id: str, document: dict):
        self.id = release_id
        self._doc = _without_removed(document)

    _views: OrderedDict[str, ReleaseView] = OrderedDict()
    _views_lock = threading.Lock()

    @classmethod
    def of(cls, release) -> ReleaseView:
        """The view of a stored `Release` (anything with `.id` and `.document`), shared per release id:
        a release is immutable and its id the digest of its document (verified when it is read)."""
        with cls._views_lock:
            view = cls._views.get(release.id)
            if view is not None:
                cls._views.move_to_end(release.id)
                return view
        view = cls(release.id, release.document)
        with cls._views_lock:
            view = cls._views.setdefault(release.id, view)
            while len(cls._views) > _CACHED:
                cls._views.popitem(last=False)
        return view

    @classmethod
    def of_document(cls, release_id: str, document: dict) -> ReleaseView:
        return cls(release_id, document)

    def __repr__(self) -> str:
        return f"<ReleaseView {self.short}>"

    @cached_property
    def inventory(self) -> Inventory:
        return Inventory.model_validate(self._doc["inventory"])

    @cached_property
    def manifests(self) -> dict[str, FirmwareManifest]:
        return {k: FirmwareManifest.model_validate(v) for k, v in self._doc["manifests"].items()}

    @cached_property
    def deny_list(self) -> DenyList:
        return DenyList.model_validate(self._doc.get("deny_list") or {})

    @cached_property
    def boot(self) -> BootProfiles:
        return BootProfiles.model_validate(self._doc["boot"])

    @cached_property
    def policy(self) -> Policy:
        return Policy.model_validate(self._doc.get("policy") or {})

    @property
    def site(self) -> str:
        return self._doc["site"]

    @property
    def templates(self) -> dict[str, str]:
        """Template file name -> sha256 of its bytes in the artifact store."""
        return self._doc["templates"]

    @cached_property
    def _profiles(self) -> dict[str, BootProfile]:
        return {p.name: p for p in self.boot.profiles}

    @cached_property
    def _nodes(self) -> dict[str, tuple[str, Node]]:
        return {n.name: (r.name, n) for r in self.inventory.racks for n in r.nodes}

    @cached_property
    def _pins(self) -> dict[str, tuple[FirmwareComponent, ...]]:
        return {model: tuple(sorted(m.components, key=lambda c: (c.order, c.name)))
                for model, m in self.manifests.items()}

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

    def boot_mode(self, name: str) -> str | None:
        """The node's spec `firmware` ("uefi" | "bios"); None for a node not in the release."""
        return self._boot_modes.get(name)

    @cached_property
    def _boot_modes(self) -> dict[str, str]:
        # From the frozen document (validated when it was frozen), not the typed inventory: a plan
        # asks it of every node, and typing 10,000 nodes cost more than planning them.
        return {n["name"]: n.get("firmware") or "uefi" for r in self._doc["inventory"]["racks"] for n in r["nodes"]}

    def rack_of(self, name: str) -> str | None:
        found = self._nodes.get(name)
        return found[0] if found else None

    def nodes(self) -> list[tuple[str, Node]]:
        return list(self._nodes.values())

    def profile(self, name: str) -> BootProfile | None:
        return self._profiles.get(name)

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
