"""`make demo`: the main job, end to end, on the embedded default (SQLite + a simulated site)."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from provisioner.cli import main as cli


def run(data_dir: Path) -> int:
    spec = Path(__file__).resolve().parent.parent
    base = ["--spec", str(spec), "--data", str(data_dir), "--as", "demo-author"]
    for step in (["validate"], ["release", "build"], ["release", "list"], ["audit", "verify"]):
        print(f"\n$ provisioner {' '.join(step)}", flush=True)
        code = cli(base + step)
        if code:
            return code
    return 0


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="provisioner-demo-") as d:
        sys.exit(run(Path(d)))
