"""Opening spec files: only regular files whose resolved path is inside the spec directory, within limits.

A spec directory comes from git, a colleague or a CI job. Nothing in it may make the loader, the
release builder or the template digests read another file of the machine (`templates/x.j2` linked
to /etc/shadow), wait forever (a FIFO), or read without end (`policy.yaml` linked to /dev/zero).
Every path is resolved and stat-ed before it is opened; a FIFO or a device is never opened at all,
and the open itself uses O_NOFOLLOW | O_NONBLOCK and checks it got the file it stat-ed. A refusal
is one `SpecProblem` naming the file; a file's bytes are never part of the message.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from provisioner.errors import SpecProblem

MAX_FILE_BYTES_ENV = "PROVISIONER_SPEC_MAX_FILE_BYTES"
DEFAULT_MAX_FILE_BYTES = 1 << 20  # 1 MiB: a 10,000-node inventory is about 2.5 MB, so big sites raise it


def _max_file_bytes_from_env() -> int:
    raw = os.environ.get(MAX_FILE_BYTES_ENV, "")
    return int(raw) if raw.isdigit() and int(raw) > 0 else DEFAULT_MAX_FILE_BYTES


@dataclass(frozen=True)
class SpecLimits:
    """What one spec file may cost the loader. Defaults fit the example spec many times over."""

    max_file_bytes: int = field(default_factory=_max_file_bytes_from_env)  # each YAML file and template
    max_depth: int = 32          # nesting of mappings and sequences, aliases expanded
    max_alias_nodes: int = 10_000  # nodes that aliases may add when expanded (billion laughs: ~5 million)
    max_int_digits: int = 20     # any 64-bit integer; Python refuses to parse over 4,300 anyway


class SpecFileRefused(Exception):
    """A spec path that must not be read; carries the one line to print."""

    def __init__(self, problem: SpecProblem):
        super().__init__(str(problem))
        self.problem = problem


_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory"))


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def _refuse(rel: str, message: str, expected: str) -> SpecFileRefused:
    return SpecFileRefused(SpecProblem(rel, None, "(file)", message, expected))


def inside(root: Path, rel: str) -> Path:
    """The resolved path of `rel`, if it stays inside `root` once every link is followed."""
    real = Path(os.path.realpath(Path(root) / rel))
    if not real.is_relative_to(os.path.realpath(root)):
        raise _refuse(rel, f"resolves to {real}, outside the spec directory",
                      "a file inside the spec directory (copy it in rather than linking to it)")
    return real


def check_file(root: Path, rel: str) -> tuple[Path, os.stat_result]:
    """(resolved path, stat) of a regular file inside `root`; FileNotFoundError if there is none."""
    real = inside(root, rel)
    st = os.stat(real)
    if not stat.S_ISREG(st.st_mode):
        raise _refuse(rel, f"is {_kind(st.st_mode)}, not a regular file", "a regular file")
    return real, st


def check_dir(root: Path, rel: str) -> Path | None:
    """The resolved directory `rel` inside `root`, or None when there is none; refused if it leads out."""
    real = inside(root, rel)
    if not real.exists():
        return None
    if not real.is_dir():
        raise _refuse(rel, f"is {_kind(os.stat(real).st_mode)}, not a directory", "a directory")
    return real


def open_file(root: Path, rel: str, max_bytes: int | None = None):
    """A binary file object for the regular file `rel` inside `root` (FileNotFoundError if missing)."""
    real, st = check_file(root, rel)
    if max_bytes is not None and st.st_size > max_bytes:
        raise _refuse(rel, f"is {st.st_size:,} bytes, more than the {max_bytes:,} allowed",
                      f"a smaller file, or a higher limit ({MAX_FILE_BYTES_ENV} or --spec-max-file-bytes)")
    try:
        # O_NOFOLLOW: the last component cannot have become a link since we resolved it;
        # O_NONBLOCK: should it have become a FIFO, opening it does not wait for a writer.
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise _refuse(rel, f"cannot be opened: {e.strerror}", "a readable regular file") from None
    st2 = os.fstat(fd)
    if not stat.S_ISREG(st2.st_mode) or (st2.st_dev, st2.st_ino) != (st.st_dev, st.st_ino):
        os.close(fd)
        raise _refuse(rel, "was replaced while being opened", "a spec directory nobody changes during a run")
    return os.fdopen(fd, "rb")


def read_file(root: Path, rel: str, max_bytes: int | None = None) -> bytes:
    """The bytes of `rel`, refused past `max_bytes` even if the file grows while it is read."""
    with open_file(root, rel, max_bytes) as f:
        data = f.read() if max_bytes is None else f.read(max_bytes + 1)
    if max_bytes is not None and len(data) > max_bytes:
        raise _refuse(rel, f"grew past the {max_bytes:,} bytes allowed while being read", "a file nobody writes to")
    return data


def tree_files(root: Path, rel_dir: str, problems: list[SpecProblem]) -> list[str]:
    """Every regular file under `rel_dir` (relative to `root`), sorted; anything else is a problem.

    Links are not followed into directories; a link to a file is kept when it resolves inside.
    """
    top = check_dir(root, rel_dir)
    if top is None:
        return []
    out = []
    for dirpath, dirnames, filenames in os.walk(top, followlinks=False):
        base = Path(dirpath).relative_to(top)
        for d in list(dirnames):
            if os.path.islink(os.path.join(dirpath, d)):
                dirnames.remove(d)
                filenames.append(d)  # checked below like any other entry: refused as a directory
        for name in filenames:
            rel = (Path(rel_dir) / base / name).as_posix()
            try:
                check_file(root, rel)
            except SpecFileRefused as e:
                problems.append(e.problem)
                continue
            except FileNotFoundError:
                problems.append(SpecProblem(rel, None, "(file)", "is a link to nothing", "a regular file"))
                continue
            out.append(rel)
    return sorted(out)
