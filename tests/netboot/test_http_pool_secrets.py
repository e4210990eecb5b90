"""The HTTP worker pool gets the database URL without showing its password to other users: not on
any command line (`ps`, /proc/PID/cmdline), and the pool still serves from that database."""

from __future__ import annotations

import subprocess
import urllib.request
from pathlib import Path

from helpers import copy_spec, need_tool

from provisioner.serve.http_pool import HttpPool

PASSWORD = "pool-s3cret-9f2c"


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                kids = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            found += kids
            todo += kids
    return found


def test_the_database_password_is_on_no_command_line_of_the_pool(tmp_path, pg_cluster):
    need_tool("ps")
    url = pg_cluster.create_database("t_pool_secret", template="prov_template")
    assert url.startswith("postgresql://prov@")
    with_password = url.replace("postgresql://prov@", f"postgresql://prov:{PASSWORD}@")  # trust auth ignores it
    pool = HttpPool("127.0.0.1", 0, spec_dir=copy_spec(tmp_path / "spec"), data_dir=tmp_path / "data",
                    db_url=with_password, http_base=None, workers=1, threads=2)
    try:
        pool.start()
        with urllib.request.urlopen(f"http://127.0.0.1:{pool.port}/boot.ipxe", timeout=30) as r:
            assert r.status == 200 and r.read().startswith(b"#!ipxe")
        pids = [pool.proc.pid, *_descendants(pool.proc.pid)]
        assert len(pids) >= 2  # the gunicorn arbiter and its worker
        for pid in pids:
            assert PASSWORD.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
        listing = subprocess.run(["ps", "-eo", "pid,args", "ww"], capture_output=True, text=True).stdout
        assert "provisioner.serve.http_pool" in listing and PASSWORD not in listing
    finally:
        pool.stop()
        pg_cluster.drop_database("t_pool_secret")
