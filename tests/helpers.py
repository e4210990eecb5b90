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


def private_spec(tmp_path: Path) -> Path:
    """The example spec with its BMCs moved to a 127.N block nobody uses right now."""
    import socket

    spec = copy_spec(tmp_path / "spec")
    for n in range(60, 250):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind((f"127.{n}.11.1", 6230))
            except OSError:
                continue
        inv = spec / "inventory.yaml"
        inv.write_text(inv.read_text().replace("address: 127.0.", f"address: 127.{n}."))
        return spec
    raise OSError("no free 127.N block")


def run_cli(*args: str, spec: Path, data: Path, env: dict | None = None, timeout: float = 120):
    """Run the real `provisioner` command in a subprocess; return CompletedProcess (text)."""
    e = {k: v for k, v in os.environ.items() if k != "PROVISIONER_DB"}  # only a test's own `env` picks the store
    e.update({"PROVISIONER_SPEC": str(spec), "PROVISIONER_DATA": str(data), **(env or {})})
    return subprocess.run([sys.executable, "-m", "provisioner", *args], env=e, capture_output=True,
                          text=True, timeout=timeout)


def cli_here(*args: str, spec: Path, data: Path, db: str | None = None) -> subprocess.CompletedProcess:
    """The `provisioner` command in this process (no interpreter start-up: tests that run it many
    times); same arguments and result shape as run_cli."""
    import contextlib
    import io

    from provisioner.cli import main

    argv = ["--spec", str(spec), "--data", str(data), *(["--db", db] if db else []), *args]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def execute_raw(url: str, *statements: str) -> None:
    """Run SQL on the store behind the provisioner's back (tampering tests); driver errors propagate."""
    from sqlalchemy import create_engine, text

    from provisioner.store.db import normalize_url

    engine = create_engine(normalize_url(url))
    try:
        with engine.begin() as c:
            for st in statements:
                c.execute(text(st))
    finally:
        engine.dispose()


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


# -- a throw-away PostgreSQL cluster ---------------------------------------------------------------
def postgres_bin(tool: str) -> str | None:
    """Debian's PostgreSQL server tools live in /usr/lib/postgresql/<major>/bin, not on PATH."""
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{tool}"), key=lambda p: int(p.parts[-3]))
    return str(found[-1]) if found else shutil.which(tool)


class PgCluster:
    """initdb + pg_ctl on a free 127.0.0.1 port, in a fresh directory; `stop()` removes it all.

    As root the data directory belongs to `postgres` and the server runs as that user (PostgreSQL
    refuses to run as root). Durability is off: the cluster lives for one test session.
    """

    def __init__(self):
        import socket
        import tempfile

        self.initdb, self.pg_ctl = postgres_bin("initdb"), postgres_bin("pg_ctl")
        if not (self.initdb and self.pg_ctl):
            _missing("PostgreSQL server (Debian package postgresql: initdb, pg_ctl)")
        self.dir = Path(tempfile.mkdtemp(prefix=f"prov-pg-{os.getpid()}-"))
        self.data = self.dir / "data"
        if os.geteuid() == 0:
            import pwd

            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        self._as_owner(self.initdb, "-D", str(self.data), "-A", "trust", "-U", "prov", "--no-sync",
                       "-E", "UTF8", "--locale", "C")
        for _ in range(5):
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                self.port = s.getsockname()[1]
            # PROVISIONER_TEST_PG_OPTS: more server settings, to look into a run (e.g. pg_stat_statements)
            opts = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
                    f"-c synchronous_commit=off -c full_page_writes=off -c max_connections=300" + os.environ.get("PROVISIONER_TEST_PG_OPTS", ""))
            r = self._as_owner(self.pg_ctl, "-D", str(self.data), "-o", opts, "-l", str(self.dir / "log"),
                               "-w", "start", check=False)
            if r.returncode == 0:
                break
        else:
            raise RuntimeError(f"pg_ctl start failed: {r.stdout}{r.stderr}")
        self.admin = self.url("postgres")

    def _as_owner(self, *cmd: str, check: bool = True):
        if os.geteuid() == 0:
            cmd = ("runuser", "-u", "postgres", "--", *cmd)
        return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=120)

    def url(self, database: str) -> str:
        return f"postgresql://prov@127.0.0.1:{self.port}/{database}"

    def sql(self, *statements: str) -> None:
        import psycopg

        with psycopg.connect(self.admin, autocommit=True) as c:
            for st in statements:
                c.execute(st)

    def create_database(self, name: str, template: str = "template0") -> str:
        self.sql(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        self.sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        self._as_owner(self.pg_ctl, "-D", str(self.data), "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(self.dir, ignore_errors=True)
