"""Test helpers shared across test packages: a copy of the example spec, the CLI in-process and as a
subprocess, and `need_tool`/`need_root` for tests that need an outside tool or root.

On a developer machine a missing tool skips the test LOUDLY (a warning, and a banner in the
summary); under CI (CI=true) it is a failure: CI must run every test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _missing(what: str) -> None:
    msg = f"MISSING {what}: test cannot run here (install it; .ci/run does)"
    if IN_CI:
        pytest.fail(msg + " — CI must not skip tests", pytrace=False)
    warnings.warn(msg, stacklevel=3)
    pytest.skip(msg)


def need_tool(*names: str) -> None:
    for name in names:
        if shutil.which(name) is None and not os.path.exists(name):
            _missing(f"tool {name!r}")


def need_root() -> None:
    if os.geteuid() != 0:
        _missing("root (network namespaces, privileged ports)")
SPEC_ITEMS = ["inventory.yaml", "policy.yaml", "deny-list.yaml", "boot_profiles.yaml",
              "firmware_manifests", "templates", "artifacts"]


def copy_spec(dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for item in SPEC_ITEMS:
        src = REPO / item
        if src.is_dir():
            shutil.copytree(src, dest / item)
        else:
            shutil.copy2(src, dest / item)
    return dest


def run_cli(*args: str, spec: Path, data: Path, env: dict | None = None, timeout: float = 120):
    """Run the real `provisioner` command in a subprocess; return CompletedProcess (text)."""
    e = {**os.environ, "PROVISIONER_SPEC": str(spec), "PROVISIONER_DATA": str(data), **(env or {})}
    e.pop("PROVISIONER_DB", None)
    return subprocess.run([sys.executable, "-m", "provisioner", *args], env=e, capture_output=True,
                          text=True, timeout=timeout)


def built_site(spec_dir: Path, data: Path, envs=("staging", "production"), state: str | None = None):
    """A store with the spec released, the environments pointed at it and the nodes synced.

    Returns (Context, Release). `state` sets every node's state (e.g. "installing").
    """
    from provisioner.context import Context, Settings
    from provisioner.releases.build import freeze, import_artifacts

    ctx = Context(Settings(spec_dir=spec_dir, data_dir=data, actor="test"))
    rel = freeze(ctx.spec)
    import_artifacts(spec_dir, rel, ctx.artifacts)
    ctx.store.add_release(rel, "test")
    ctx.store.sync_nodes(ctx.spec)
    for env in envs:
        ctx.store.point_environment(env, rel.id, "test", "test set-up")
    if state:
        for n in ctx.store.nodes():
            ctx.store.update_node(n.name, state=state)
    return ctx, rel


def pinned(rel, model: str) -> dict[str, str]:
    return {c["name"]: c["version"] for c in rel.document["manifests"][model]["components"]}
