"""Run the `provisioner` command in this process: the CLI's imports cost seconds per subprocess, so
suites that run many commands (the hostile-input corpus, the spec confinement tests) call `main`.

    r = run_main(capsys, "validate", spec=spec_dir, data=tmp_path / "data")
    assert r.code == 2 and r.lines == [...]
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Outcome:
    code: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return [ln for ln in self.err.splitlines() if ln.strip()]


def run_main(capsys, *args: str, spec: Path, data: Path, db: str | None = None) -> Outcome:
    """`provisioner --spec SPEC --data DATA ARGS...`; an escaping exception fails the test (a traceback)."""
    from provisioner.cli import main

    capsys.readouterr()  # drop what came before
    argv = ["--spec", str(spec), "--data", str(data)] + (["--db", db] if db else []) + list(args)
    saved = os.environ.pop("PROVISIONER_DB", None)  # like helpers.run_cli: the store is the data dir's
    try:
        code = main(argv)
    finally:
        if saved is not None:
            os.environ["PROVISIONER_DB"] = saved
    cap = capsys.readouterr()
    return Outcome(code, cap.out, cap.err)
