"""Shared test helpers.

Tests that need an outside tool (ipmitool, qemu, dnsmasq, ...) or root call `need_tool`/`need_root`.
On a developer machine a missing tool skips the test LOUDLY (a warning in the summary); under CI
(CI=true) it is a failure: CI must run every test.
"""

from __future__ import annotations

import os
import shutil
import warnings

import pytest

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


def pytest_terminal_summary(terminalreporter):
    skipped = terminalreporter.stats.get("skipped", [])
    if skipped:
        terminalreporter.write_sep("!", f"{len(skipped)} TESTS SKIPPED — see reasons above", red=True)


@pytest.fixture
def spec_dir(tmp_path):
    """A private, writable copy of the example spec."""
    from helpers import copy_spec

    return copy_spec(tmp_path / "spec")
