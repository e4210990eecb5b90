"""Freezing a spec into a release: canonical JSON whose sha256 is the release id."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provisioner.errors import PolicyViolation
from provisioner.releases.artifacts import ArtifactStore
from provisioner.releases.canonical import canonical_json, sha256_hex
from provisioner.spec.models import Spec

FORMAT = 1


@dataclass(frozen=True)
class Release:
    id: str
    document: dict[str, Any]
    canonical: bytes

    @property
    def short(self) -> str:
        return self.id[:12]


def referenced_artifacts(spec: Spec) -> dict[str, dict]:
    """Every artifact the spec names: sha256 -> {file, size}."""
    out: dict[str, dict] = {}
    for m in spec.manifests.values():
        for c in m.components:
            out[c.image.sha256] = {"file": c.image.file, "size": c.image.size}
    for p in spec.boot.profiles:
        for ref in (p.kernel, p.initrd, p.rootfs):
            if ref is not None:
                out[ref.sha256] = {"file": ref.file, "size": ref.size}
    return out


def release_document(spec: Spec) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "site": spec.inventory.site,
        "inventory": spec.inventory.model_dump(mode="json"),
        "manifests": {k: v.model_dump(mode="json") for k, v in spec.manifests.items()},
        "deny_list": spec.deny_list.model_dump(mode="json"),
        "boot": spec.boot.model_dump(mode="json"),
        "policy": spec.policy.model_dump(mode="json"),
        "templates": dict(spec.templates),
        "artifacts": referenced_artifacts(spec),
    }


def freeze(spec: Spec, extra_blocked: list[tuple[str | None, str, str]] = ()) -> Release:
    """Freeze `spec`. `extra_blocked` are (model or None, component, version) blocked at run time."""
    for model, m in spec.manifests.items():
        for c in m.components:
            for bmodel, comp, version in extra_blocked:
                if bmodel in (None, model) and comp == c.name and version == c.version:
                    raise PolicyViolation(
                        f"firmware_manifests/{model}.yaml pins {comp} {version}, which is blocked "
                        f"(provisioner block list); pin another version or unblock it")
    doc = release_document(spec)
    data = canonical_json(doc)
    return Release(id=sha256_hex(data), document=doc, canonical=data)


def import_artifacts(spec_root: Path, release: Release, store: ArtifactStore) -> int:
    """Copy every referenced artifact and template into the content-addressed store, checking digests.

    Boot configs are later rendered from these stored template bytes, so a node is handed exactly
    what the release froze, whatever happens to the spec directory afterwards. Files are read as
    the loader reads them (regular files inside the spec directory, `spec.files`): a template
    swapped for a link to /etc/shadow after validation is refused here too (SpecError).
    """
    from provisioner.errors import SpecError, SpecProblem
    from provisioner.spec import files

    n = 0
    wanted = dict(release.document["artifacts"])
    wanted.update({d: {"file": f"templates/{name}"} for name, d in release.document["templates"].items()})
    for digest, meta in sorted(wanted.items()):
        if not store.has(digest):
            try:
                data = files.read_file(Path(spec_root), meta["file"])
            except files.SpecFileRefused as e:
                raise SpecError(e.problem) from None
            except FileNotFoundError:
                raise SpecError(SpecProblem(meta["file"], None, "(file)", "is gone since the spec was loaded",
                                                  "the spec directory unchanged during `release build`")) from None
            store.put(data, expected=digest)
            n += 1
        else:
            store.verify(digest)
    return n


def load_release(doc_bytes: bytes, expected_id: str) -> Release:
    import json

    from provisioner.errors import ReleaseError

    if sha256_hex(doc_bytes) != expected_id:
        raise ReleaseError(f"stored release {expected_id[:12]} was altered: its document no longer hashes to its id")
    return Release(id=expected_id, document=json.loads(doc_bytes), canonical=doc_bytes)
