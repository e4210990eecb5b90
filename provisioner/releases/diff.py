"""What changed between two releases, in an operator's words (both read through their typed views)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from provisioner.releases.view import ReleaseView


@dataclass(frozen=True)
class Change:
    area: str  # firmware | image | template | policy | inventory | deny-list
    subject: str
    before: str | None
    after: str | None

    def __str__(self) -> str:
        if self.before is None:
            return f"{self.area}: {self.subject} added ({self.after})"
        if self.after is None:
            return f"{self.area}: {self.subject} removed (was {self.before})"
        return f"{self.area}: {self.subject} {self.before} → {self.after}"

    def as_dict(self) -> dict:
        return {"area": self.area, "subject": self.subject, "before": self.before, "after": self.after}


def _flat(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: obj}


def _pairs(a: dict, b: dict, area: str, fmt=str) -> list[Change]:
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if va != vb:
            out.append(Change(area, k, None if va is None else fmt(va), None if vb is None else fmt(vb)))
    return out


def diff_releases(a: ReleaseView, b: ReleaseView) -> list[Change]:
    changes: list[Change] = []

    def pins(release: ReleaseView):
        return {f"{model} {c.name}": c for model, m in release.manifests.items() for c in m.components}

    pa, pb = pins(a), pins(b)
    for key in sorted(set(pa) | set(pb)):
        ca, cb = pa.get(key), pb.get(key)
        if ca and cb and ca.version == cb.version and ca.image.sha256 != cb.image.sha256:
            changes.append(Change("firmware", f"{key} {ca.version} image", ca.image.sha256[:12], cb.image.sha256[:12]))
        elif ca != cb and not (ca and cb and ca.version == cb.version):
            changes.append(Change("firmware", key, ca and ca.version, cb and cb.version))
        elif ca and cb and ca != cb:
            changes.append(Change("firmware", f"{key} flash method/order", f"{ca.method}/{ca.order}",
                                  f"{cb.method}/{cb.order}"))

    def images(release: ReleaseView):
        out = {}
        for p in release.boot.profiles:
            for f in ("kernel", "initrd", "rootfs"):
                if ref := getattr(p, f):
                    out[f"{p.name} {f}"] = ref.sha256[:12]
            out[f"{p.name} kernel_args"] = p.kernel_args
            out[f"{p.name} template"] = p.template
        return out

    changes += _pairs(images(a), images(b), "image")
    changes += _pairs({k: v[:12] for k, v in a.templates.items()},
                      {k: v[:12] for k, v in b.templates.items()}, "template")
    changes += _pairs(_flat(a.policy.model_dump(mode="json")), _flat(b.policy.model_dump(mode="json")), "policy")

    def blocked(release: ReleaseView):
        out = {f"{b_.component} {b_.version}": b_.reason for b_ in release.deny_list.blocked}
        for model, m in release.manifests.items():
            for b_ in m.blocked:
                out[f"{model} {b_.component} {b_.version}"] = b_.reason
        return out

    changes += _pairs(blocked(a), blocked(b), "deny-list")

    def nodes(release: ReleaseView):
        return {n.name: f"{n.model}/{n.environment}/{','.join(n.macs)}/{n.bmc.address}" for _, n in release.nodes()}

    changes += _pairs(nodes(a), nodes(b), "inventory")
    return changes
