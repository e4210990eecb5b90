"""Pydantic models of the spec files: inventory, firmware manifests, boot profiles, policy.

All models are frozen and forbid unknown keys, so a typo in a spec file is an error, not a
silently ignored field.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
MAC = re.compile(r"^[0-9a-f]{2}(?::[0-9a-f]{2}){5}$")

Name = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$")]
Version = Annotated[str, StringConstraints(pattern=r"^[0-9A-Za-z][0-9A-Za-z._+-]{0,31}$")]
Component = Literal["bmc", "bios", "nic", "raid", "cpld", "psu", "disk", "gpu"]


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ArtifactRef(Frozen):
    """A file of the spec directory named by its content: path (relative to the spec) + sha256 + size."""

    file: str
    sha256: str
    size: int = Field(ge=0)

    @field_validator("sha256")
    @classmethod
    def _hex(cls, v: str) -> str:
        if not SHA256_HEX.match(v):
            raise ValueError("must be 64 lowercase hex digits (a sha256)")
        return v


class Credentials(Frozen):
    """A reference to BMC credentials; the secret itself never lives in the spec."""

    username: str
    password_env: str | None = None
    password_file: str | None = None
    # CA certificate(s) (PEM file or directory; relative to the spec directory) that signed the BMCs'
    # TLS certificates (Redfish). Without it: <data>/secrets/<name>.ca.pem if present, else the system store.
    ca_bundle: str | None = None

    @field_validator("password_file")
    @classmethod
    def _one_source(cls, v, info):
        if v and info.data.get("password_env"):
            raise ValueError("give password_env or password_file, not both")
        return v


class Bmc(Frozen):
    driver: Name = "ipmi"
    address: str
    port: int = Field(default=623, ge=1, le=65535)  # 443 for driver redfish
    credentials: Name
    # Redfish: where this BMC fetches images from us (our HTTP server's base URL as the BMC's network
    # sees it), for UpdateService.SimpleUpdate; without it images are pushed (MultipartHttpPushUri).
    image_server: Annotated[str, StringConstraints(pattern=r"^https?://[^/\s]+(/[^\s]*)?$")] | None = None

    @model_validator(mode="before")
    @classmethod
    def _redfish_port(cls, data):
        if isinstance(data, dict) and data.get("driver") == "redfish" and "port" not in data:
            return {**data, "port": 443}  # HTTPS (DSP0266 §7)
        return data

    @model_validator(mode="after")
    def _redfish_options(self):
        if self.image_server is not None and self.driver != "redfish":
            raise ValueError(f"image_server is a Redfish option; this BMC's driver is {self.driver}")
        return self


class Node(Frozen):
    name: Name
    macs: list[str] = Field(min_length=1)
    model: Name
    environment: Name
    boot_profile: Name
    firmware: Literal["uefi", "bios"] = "uefi"
    bmc: Bmc

    @field_validator("macs")
    @classmethod
    def _macs(cls, v: list[str]) -> list[str]:
        out = []
        for mac in v:
            m = mac.lower().replace("-", ":")
            if not MAC.match(m):
                raise ValueError(f"{mac!r} is not a MAC address")
            out.append(m)
        return out


class Rack(Frozen):
    name: Name
    nodes: list[Node] = Field(min_length=1)


class Inventory(Frozen):
    site: Name
    credentials: dict[Name, Credentials]
    racks: list[Rack] = Field(min_length=1)


class FirmwareComponent(Frozen):
    name: Component
    version: Version
    image: ArtifactRef
    method: Literal["hpm", "inband"] = "inband"
    order: int = Field(default=0, ge=0)
    # How to reach the component when the server cannot netboot (boot-looping after a bad in-band
    # flash): through its BMC. `hpm`: PICMG HPM.1 over IPMI (Redfish when that driver lands).
    recovery: Literal["hpm"] | None = None

    @field_validator("recovery")
    @classmethod
    def _recovery_for_inband(cls, v, info):
        if v is not None and info.data.get("method") != "inband":
            raise ValueError("a recovery path is for a component flashed in band (method: inband); "
                             "this one is already flashed through its BMC")
        return v


class BlockedVersion(Frozen):
    component: Component
    version: Version
    reason: str = Field(min_length=3)
    incident: str | None = None
    by: str
    at: datetime
    model: Name | None = None  # None: blocked on every model


class RedfishMapping(Frozen):
    """How this model's Redfish BMC names its firmware: FirmwareInventory SoftwareId per component."""

    software_ids: dict[Component, Annotated[str, StringConstraints(min_length=1, max_length=128)]] = Field(min_length=1)


class FirmwareManifest(Frozen):
    model: Name
    vendor: str
    components: list[FirmwareComponent] = Field(min_length=1)
    redfish: RedfishMapping | None = None

    @model_validator(mode="after")
    def _mapped_components_are_pinned(self):
        if self.redfish:
            unknown = sorted(set(self.redfish.software_ids) - {c.name for c in self.components})
            if unknown:
                raise ValueError(f"redfish.software_ids names {', '.join(unknown)}, which this manifest does not pin")
        return self
    allowed: dict[Component, list[Version]] = Field(default_factory=dict)
    blocked: list[BlockedVersion] = Field(default_factory=list)


class DenyList(Frozen):
    blocked: list[BlockedVersion] = Field(default_factory=list)


class BootProfile(Frozen):
    name: Name
    kind: Literal["install", "flash"]
    os: str
    kernel: ArtifactRef
    initrd: ArtifactRef
    rootfs: ArtifactRef | None = None
    kernel_args: str = ""
    template: str


class BootProfiles(Frozen):
    profiles: list[BootProfile] = Field(min_length=1)
    flasher: Name


class Timeouts(Frozen):
    power: float = Field(default=60, gt=0)
    boot: float = Field(default=600, gt=0)
    flash: float = Field(default=1800, gt=0)
    callback: float = Field(default=900, gt=0)


class RolloutPolicy(Frozen):
    canary: int = Field(default=1, ge=1)
    wave_size: int = Field(default=4, ge=1)
    max_unavailable_per_rack: int = Field(default=1, ge=1)
    max_concurrency: int = Field(default=16, ge=1)
    failure_threshold: int = Field(default=1, ge=1, description="failed nodes that halt the rollout")
    timeouts: Timeouts = Timeouts()
    # Removed: it made plain `drift` re-provision. Named here only to say so where the key is.
    drift_action: None = Field(default=None, exclude=True)

    @field_validator("drift_action", mode="before")
    @classmethod
    def _no_drift_action(cls, v):
        raise ValueError("no such key: `provisioner drift` reports, `provisioner drift --fix` re-provisions")


class StagingGate(Frozen):
    environment: Name = "staging"
    min_nodes: int = Field(default=2, ge=1)
    soak_seconds: float = Field(default=3600, ge=0)
    success_ratio: float = Field(default=1.0, ge=0, le=1)
    approvals: int = Field(default=2, ge=1)


class Environment(Frozen):
    """One declared environment; a name not declared in policy.yaml is refused by every command."""

    # `apply`, `rollback` and `drift --fix` ask for confirmation on a terminal, and want --yes off one
    protected: bool = False


def _default_environments() -> dict[str, Environment]:
    return {"staging": Environment(), "production": Environment(protected=True)}


class Policy(Frozen):
    rollout: RolloutPolicy = RolloutPolicy()
    staging_gate: StagingGate = StagingGate()
    environments: dict[Name, Environment] = Field(default_factory=_default_environments, min_length=1)

    @field_validator("environments", mode="before")
    @classmethod
    def _shorthand(cls, v):
        # `environments: [staging, production]` declares them with no options; `staging:` alone too
        if isinstance(v, list):
            return {name: {} for name in v}
        if isinstance(v, dict):
            return {k: ({} if e is None else e) for k, e in v.items()}
        return v

    def protected(self, env: str) -> bool:
        e = self.environments.get(env)
        return bool(e and e.protected)


class Spec(Frozen):
    """A loaded, cross-checked spec directory."""

    inventory: Inventory
    manifests: dict[Name, FirmwareManifest]
    deny_list: DenyList
    boot: BootProfiles
    policy: Policy
    templates: dict[str, str]  # template file name -> sha256 of its bytes

    def nodes(self) -> list[tuple[str, Node]]:
        return [(rack.name, node) for rack in self.inventory.racks for node in rack.nodes]

    def node(self, name: str) -> Node | None:
        return next((n for _, n in self.nodes() if n.name == name), None)

    def blocked(self) -> list[BlockedVersion]:
        out = list(self.deny_list.blocked)
        for m in self.manifests.values():
            out.extend(b if b.model else b.model_copy(update={"model": m.model}) for b in m.blocked)
        return out

    def profile(self, name: str) -> BootProfile | None:
        return next((p for p in self.boot.profiles if p.name == name), None)
