"""The audit log: its entries, and the proof that it was not edited, rewritten, truncated or emptied."""

from __future__ import annotations

from pathlib import Path

from provisioner.context import Context
from provisioner.errors import InputError


def checkpoint_paths(ctx: Context) -> tuple[Path, Path]:
    """(signing key, checkpoint file): DATA/site.yaml's audit_checkpoints, else in the data directory."""
    from provisioner.store import checkpoints

    cfg = ctx.site.audit_checkpoints
    return (cfg.key or ctx.settings.data_dir / checkpoints.KEY_FILE,
            cfg.file or ctx.settings.data_dir / checkpoints.CHECKPOINT_FILE)


def verify(ctx: Context, checkpoint_file: Path | None = None, public_key: Path | None = None) -> dict:
    """{"ok", "entries", "problems"[, "checkpoints"]}: the chain walked, and held against the signed
    checkpoints (the server's by default, when present)."""
    from provisioner.store import checkpoints  # cryptography: only for the commands that sign or check

    n, problems = ctx.store.verify_audit()
    key, file = checkpoint_paths(ctx)
    if checkpoint_file is None and public_key is None and file.exists() and checkpoints.public_path(key).exists():
        checkpoint_file, public_key = file, checkpoints.public_path(key)
    if (checkpoint_file is None) != (public_key is None):
        raise InputError("--checkpoints and --public-key go together")
    data = {"ok": True, "entries": n, "problems": []}
    if checkpoint_file is not None:
        good, cp_problems = checkpoints.verify(ctx.store, checkpoint_file, checkpoints.load_public_key(public_key))
        problems = problems + cp_problems
        data["checkpoints"] = good
    data.update(ok=not problems, problems=[str(p) for p in problems])
    return data
