"""The server's own configuration, DATA/site.yaml: what a release cannot change about itself.

    gate_floor:               # the least the staging gate asks of any release
      environment: staging    # where releases are proven (never a release's own choice)
      min_nodes: 2
      soak_seconds: 3600
      success_ratio: 1.0
      approvals: 2
    audit_checkpoints:        # signed checkpoints of the audit chain (store/checkpoints.py)
      every_entries: 100
      every_minutes: 10
      key: /etc/provisioner/audit-signing.key          # default: DATA/audit-signing.key
      file: /var/log/provisioner/audit-checkpoints.jsonl  # default: DATA/audit-checkpoints.jsonl

A missing file means no floor beyond the releases' own rules and checkpoints at the defaults.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from provisioner.errors import SpecError, SpecProblem

FILE = "site.yaml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GateFloor(_Strict):
    environment: str | None = None
    min_nodes: int | None = Field(default=None, ge=1)
    soak_seconds: float | None = Field(default=None, ge=0)
    success_ratio: float | None = Field(default=None, ge=0, le=1)
    approvals: int | None = Field(default=None, ge=1)


class CheckpointSettings(_Strict):
    every_entries: int = Field(default=100, ge=1)
    every_minutes: float = Field(default=10, gt=0)
    key: Path | None = None
    file: Path | None = None


class SiteConfig(_Strict):
    gate_floor: GateFloor = GateFloor()
    audit_checkpoints: CheckpointSettings = CheckpointSettings()

    def floor(self) -> dict:
        return self.gate_floor.model_dump(exclude_none=True)


def load_site_config(data_dir: Path) -> SiteConfig:
    path = Path(data_dir) / FILE
    if not path.is_file():
        return SiteConfig()
    try:
        raw = yaml.safe_load(path.read_text()) or {}
        return SiteConfig.model_validate(raw)
    except yaml.YAMLError as e:
        raise SpecError(SpecProblem(str(path), getattr(getattr(e, "problem_mark", None), "line", None),
                                    "-", f"not valid YAML: {e}")) from None
    except ValidationError as e:
        raise SpecError([SpecProblem(str(path), None, ".".join(map(str, err["loc"])), err["msg"])
                         for err in e.errors()]) from None
