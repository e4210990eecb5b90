"""A full disk under the data directory is one line, exit 5, with what to do; nothing half-written stays.

The disk is a real one: a small tmpfs mounted for the test (root), filled up with a file.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess

import pytest
from helpers import built_site, copy_spec, need_root
from inproc import run_main


@pytest.fixture
def small_disk(tmp_path):
    need_root()
    mnt = tmp_path / "disk"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(disk) -> None:
    """Write until the file system refuses: ENOSPC from here on."""
    with open(disk / "filler", "wb", buffering=0) as f:
        block = b"\0" * 65536
        try:
            while True:
                f.write(block)
        except OSError as e:
            assert e.errno == errno.ENOSPC
    with open(disk / "filler2", "wb", buffering=0) as f:  # tmpfs can keep a partial page: take it too
        try:
            while True:
                f.write(b"\0")
        except OSError:
            pass


def test_release_build_on_a_full_disk_is_one_line_and_exit_5(small_disk, tmp_path, capsys):
    spec = copy_spec(tmp_path / "spec")
    data = small_disk / "data"
    db = f"sqlite:///{tmp_path / 'store.db'}"
    assert run_main(capsys, "audit", "verify", spec=spec, data=data, db=db).code == 0
    fill(small_disk)

    r = run_main(capsys, "release", "build", spec=spec, data=data, db=db)

    assert r.code == 5, r.err
    assert r.err_lines == ["error: no space left on device: free space there (or use --data/--db on another disk), "
                           "then run the command again; nothing was half-written"], r.err
    assert not [p for p in (data / "artifacts" / "sha256").iterdir() if p.name.startswith(".incoming")]
    listed = run_main(capsys, "release", "list", "--json", spec=spec, data=data, db=db)
    assert listed.code == 0 and json.loads(listed.out) == []
    assert run_main(capsys, "audit", "verify", spec=spec, data=data, db=db).code == 0

    (small_disk / "filler").unlink()
    r = run_main(capsys, "release", "build", spec=spec, data=data, db=db)
    assert r.code == 0, r.err  # once there is room, the same command finishes the job


def test_block_on_a_full_disk_is_one_line_and_exit_5(small_disk, tmp_path, capsys):
    spec = copy_spec(tmp_path / "spec")
    data = small_disk / "data"
    built_site(spec, data)
    os.sync()
    fill(small_disk)

    r = run_main(capsys, "block", "bios", "1.13.2", "--reason", "test", spec=spec, data=data)

    assert r.code == 5 and len(r.err_lines) == 1 and "disk" in r.err_lines[0], r.err
    (small_disk / "filler").unlink()
    assert run_main(capsys, "audit", "verify", spec=spec, data=data).code == 0
