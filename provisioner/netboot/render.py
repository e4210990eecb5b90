"""Rendering boot configs (iPXE, pxelinux, GRUB, flasher JSON) from a release's frozen templates.

Templates are read from the content-addressed store by the digests the release recorded, with
StrictUndefined: a template that names a missing variable is a render error, never a blank. The
release is read through its typed view: `node` and `profile` are the spec's models in the templates.
"""

from __future__ import annotations

import threading
from dataclasses import asdict

import jinja2

from provisioner.errors import NetbootError
from provisioner.netboot.gate import NetbootDecision
from provisioner.releases.artifacts import ArtifactStore
from provisioner.releases.view import ReleaseView
from provisioner.spec.models import Node


def template_name(decision: NetbootDecision, kind: str, release: ReleaseView | None) -> str:
    action = decision.action
    if kind == "ipxe":
        if action in ("install", "flash"):
            prof = release.profile(decision.profile) if release is not None else None
            if prof is None:
                raise NetbootError(f"boot profile {decision.profile!r} is not part of the release")
            return prof.template
        return f"{'local' if action == 'unknown' else action}.ipxe.j2"
    if kind in ("pxelinux", "grub"):
        return f"{kind}/{'local' if action == 'unknown' else action}.cfg.j2"
    if kind == "flasher":
        return "flasher.json.j2"
    raise NetbootError(f"unknown boot config kind {kind!r}")


class Renderer:
    """One Jinja2 environment per release (templates are immutable within a release, so cached)."""

    def __init__(self, artifacts: ArtifactStore):
        self.artifacts = artifacts
        self._envs: dict[str, jinja2.Environment] = {}
        self._lock = threading.Lock()

    def _env(self, release_id: str, templates: dict[str, str]) -> jinja2.Environment:
        env = self._envs.get(release_id)
        if env is None:
            def load(name: str):
                digest = templates.get(name)
                if digest is None:
                    return None
                try:
                    return self.artifacts.read(digest).decode("utf-8"), None, lambda: True
                except UnicodeDecodeError:
                    raise NetbootError(f"template {name} is not UTF-8 text") from None

            env = jinja2.Environment(loader=jinja2.FunctionLoader(load), undefined=jinja2.StrictUndefined,
                                     autoescape=False, keep_trailing_newline=True, trim_blocks=False)
            with self._lock:
                self._envs[release_id] = env
        return env

    def render(self, decision: NetbootDecision, kind: str, release: ReleaseView, variables: dict) -> str:
        name = template_name(decision, kind, release)
        release_id = release.id
        try:
            tpl = self._env(release_id, release.templates).get_template(name)
            return tpl.render(**variables)
        except jinja2.TemplateNotFound:
            raise NetbootError(f"template {name} is not part of release {release_id[:12]}") from None
        except jinja2.TemplateSyntaxError as e:  # its str() quotes the template's line: keep the message only
            raise NetbootError(f"render error in template {name} line {e.lineno}: "
                               + " ".join(str(e.message).split())) from None
        except jinja2.TemplateError as e:
            raise NetbootError(f"render error in template {name}: " + " ".join(str(e).split())) from None


def context_for(decision: NetbootDecision, release: ReleaseView | None, node: Node | None, *, mac: str,
                http_base: str, token: str | None) -> dict:
    """The variables every template may use."""
    host = http_base.split("://", 1)[-1].rstrip("/")

    def artifact_path(digest: str) -> str:
        return f"/artifacts/sha256/{digest}"

    def artifact_url(digest: str) -> str:
        return f"{http_base}{artifact_path(digest)}"

    profile = release.profile(decision.profile) if release is not None and decision.profile else None
    name = node.name if node else mac
    return {
        "node": node or {"name": mac},
        "mac": mac,
        "site": release.site if release is not None else "",
        "release_id": decision.release_id or "",
        "reason": decision.reason,
        "profile": profile,
        "components": [asdict(c) for c in decision.components],
        "token": token or "",
        "callback_url": f"{http_base}/api/v1/callback/{name}" if token else "",
        "flasher_url": f"{http_base}/flasher/{name}.json?token={token}" if token else "",
        "http_base": http_base,
        "http_host": host,
        "artifact_url": artifact_url,
        "artifact_path": artifact_path,
    }
