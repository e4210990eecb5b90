"""Suite-wide hooks and fixtures. Shared helpers (need_tool, need_root, copy_spec, ...) live in
helpers.py: a module named `conftest` is not a safe thing to import from (tests/pipeline has one too)."""

from __future__ import annotations

import pytest


def pytest_terminal_summary(terminalreporter):
    skipped = terminalreporter.stats.get("skipped", [])
    if skipped:
        terminalreporter.write_sep("!", f"{len(skipped)} TESTS SKIPPED — see reasons above", red=True)


@pytest.fixture
def spec_dir(tmp_path):
    """A private, writable copy of the example spec."""
    from helpers import copy_spec

    return copy_spec(tmp_path / "spec")
