"""Settings and the lazily opened parts (spec, store, artifact store) shared by the CLI and servers."""

from __future__ import annotations

import getpass
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from provisioner.releases.artifacts import ArtifactStore
from provisioner.site_config import SiteConfig, load_site_config
from provisioner.spec.files import SpecLimits
from provisioner.spec.loader import load_spec
from provisioner.spec.models import Spec
from provisioner.store.db import Database, default_url
from provisioner.store.repo import Store

if TYPE_CHECKING:
    from provisioner.auth.identity import Actor


def default_actor() -> str:
    """The OS login: what direct store access records beside `root@HOST (local store)`."""
    return getpass.getuser()


@dataclass
class Settings:
    spec_dir: Path = field(default_factory=lambda: Path("."))
    data_dir: Path = field(default_factory=lambda: Path(".provisioner"))
    db_url: str | None = None
    actor: str = field(default_factory=default_actor)  # a name, or an Actor (auth/identity.py)
    token: str | None = None  # a personal API token: act as its account where an account is needed
    spec_limits: SpecLimits = field(default_factory=SpecLimits)  # file size from PROVISIONER_SPEC_MAX_FILE_BYTES

    @property
    def url(self) -> str:
        return self.db_url or default_url(self.data_dir)


class Context:
    """What a command needs, opened on first use and passed down explicitly (no globals)."""

    def __init__(self, settings: Settings):
        self.settings = settings

    def acting_as(self, actor: Actor) -> Context:
        """The same opened parts (spec, store, artifacts, site), another actor: one per API request."""
        from dataclasses import replace

        other = Context(replace(self.settings, actor=actor, token=None))
        for part in ("spec", "store", "site", "artifacts"):
            if part in self.__dict__:
                other.__dict__[part] = self.__dict__[part]
        return other

    @cached_property
    def spec(self) -> Spec:
        return load_spec(self.settings.spec_dir, self.settings.spec_limits)

    @cached_property
    def store(self) -> Store:
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        return Store(Database(self.settings.url))

    @cached_property
    def actor(self) -> Actor:
        """Who acts: the token's account when a token was given, else direct store access (root)."""
        from provisioner.auth.authenticate import with_token
        from provisioner.auth.identity import Actor

        if self.settings.token:
            return with_token(self.store.accounts, self.settings.token, client="local")
        a = self.settings.actor
        return a if isinstance(a, Actor) else Actor.local_store(claimed=str(a))

    @cached_property
    def site(self) -> SiteConfig:
        """DATA/site.yaml: the gate floor and the audit checkpoints (site_config.py)."""
        return load_site_config(self.settings.data_dir)

    @cached_property
    def artifacts(self) -> ArtifactStore:
        return ArtifactStore(self.settings.data_dir / "artifacts")

    def secret(self, credentials_name: str) -> tuple[str, str]:
        """(username, password) for a credentials reference: env var, file, or <data>/secrets/<name>."""
        from provisioner.errors import SpecError, SpecProblem

        cred = self.spec.inventory.credentials[credentials_name]
        if cred.password_env and os.environ.get(cred.password_env):
            return cred.username, os.environ[cred.password_env]
        candidates = []
        if cred.password_file:
            candidates.append(self.settings.spec_dir / cred.password_file)
        candidates.append(self.settings.data_dir / "secrets" / credentials_name)
        for c in candidates:
            if c.is_file():
                return cred.username, c.read_text().strip()
        raise SpecError(SpecProblem("inventory.yaml", None, f"credentials.{credentials_name}",
                                    "no password found", f"${cred.password_env or 'ENV'} set or a file at "
                                    f"{candidates[-1]}"))

    def ca_bundle(self, credentials_name: str) -> str | None:
        """The CA bundle trusted for these credentials' BMCs: the spec's `ca_bundle` (relative to the
        spec directory), else <data>/secrets/<name>.ca.pem if present (the lab writes its CA there),
        else None: the system trust store."""
        cred = self.spec.inventory.credentials[credentials_name]
        if cred.ca_bundle:
            return str(self.settings.spec_dir / cred.ca_bundle)  # an absolute ca_bundle stays absolute
        fallback = self.settings.data_dir / "secrets" / f"{credentials_name}.ca.pem"
        return str(fallback) if fallback.is_file() else None
