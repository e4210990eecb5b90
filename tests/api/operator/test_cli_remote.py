"""The CLI as a client of a real `provisioner api` process: plan, apply (followed over the rollout's
event stream), rollback, release build/list/show, rollout resume/abort, drift, audit verify,
user and token commands answer through the API with what the same command prints on the server
host (direct store access), and exit with the same code. And `--as` is gone.

One `provisioner api` process per module, on loopback, over a small private site (staging s1n01,
production r1n01) whose lab runs in the test process. Tests run in file order and build on each
other's state where the text says so.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from helpers import copy_spec, execute_raw, run_cli
from operator_api import PASSWORD

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "pipeline"))
from pipeline_site import Site, tune_spec  # noqa: E402

from provisioner.context import Context, Settings  # noqa: E402

ACCOUNTS = {"op1": "operator", "ap1": "approver", "adm1": "admin", "view1": "viewer"}


@dataclass
class Server:
    site: Site
    url: str
    config: Path
    tokens: dict[str, str] = field(default_factory=dict)
    r1: str = ""

    def remote(self, *args: str, as_: str = "op1", stdin: str | None = None, timeout: float = 300):
        """`provisioner ARGS` on a workstation: the server and a token, no spec and no store of its own."""
        e = {k: v for k, v in os.environ.items() if not k.startswith("PROVISIONER_")}
        e.update({"XDG_CONFIG_HOME": str(self.config), "PROVISIONER_SPEC": str(self.config / "no-spec"),
                  "PROVISIONER_DATA": str(self.config / "no-data"), "PROVISIONER_SERVER": self.url,
                  "PROVISIONER_TOKEN": self.tokens[as_]})
        return subprocess.run([sys.executable, "-m", "provisioner", *args], env=e, capture_output=True, text=True,
                              input=stdin, timeout=timeout)

    def local(self, *args: str, stdin: str | None = None):
        """The same command on the server host: direct store access (the installation's root)."""
        e = {k: v for k, v in os.environ.items() if not k.startswith("PROVISIONER_")}
        e.update({"PROVISIONER_SPEC": str(self.site.spec), "PROVISIONER_DATA": str(self.site.data),
                  "XDG_CONFIG_HOME": str(self.config / "server-host")})
        return subprocess.run([sys.executable, "-m", "provisioner", *args], env=e, capture_output=True, text=True,
                              input=stdin, timeout=300)


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-remote")
    spec = tune_spec(copy_spec(root / "spec"), nodes={"s1n01", "r1n01"})
    data = root / "data"
    site = Site(spec, data, Context(Settings(spec_dir=spec, data_dir=data)))
    site.start_lab()
    s = Server(site, "", root / "config")
    for name, role in ACCOUNTS.items():
        site.ctx.store.accounts.add(name, role, "test set-up", password=PASSWORD)
        s.tokens[name] = site.ctx.store.accounts.create_token(name, "tests", "test set-up")[0]
    s.r1 = site.build(author="builder")
    site.ctx.store.point_environment("staging", s.r1, "test", "test set-up")
    proc = subprocess.Popen([sys.executable, "-m", "provisioner", "--spec", str(spec), "--data", str(data), "api",
                             "--bind", "127.0.0.1:0"], stderr=subprocess.PIPE, text=True,
                            env={k: v for k, v in os.environ.items() if not k.startswith("PROVISIONER_")})
    try:
        line = proc.stderr.readline()
        m = re.search(r"on (http://127\.0\.0\.1:\d+)/api/v1", line)
        assert m, line
        s.url = m.group(1)
        yield s
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        site.stop()


def same(remote, here, code: int | None = None):
    """What the user sees is the same: stdout, stderr and the exit code."""
    assert (remote.returncode, remote.stdout, remote.stderr) == (here.returncode, here.stdout, here.stderr)
    if code is not None:
        assert remote.returncode == code, remote.stdout + remote.stderr


def normal(text: str) -> str:
    """A rollout's output with what differs between two rollouts (ids, seconds, node, env) taken out."""
    text = re.sub(r"\b[sr]1n01\b", "NODE", text)
    text = re.sub(r"\b(staging|production)\b", "ENV", text)
    return re.sub(r"\d+(\.\d+)?", "N", text)


def test_the_global_as_option_is_gone(srv):
    r = run_cli("--as", "u1", "approve", srv.r1[:12], spec=srv.site.spec, data=srv.site.data)
    assert r.returncode == 2 and r.stderr.startswith("error: No such option '--as'"), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_release_build_list_and_show_answer_as_on_the_server_host(srv):
    help_ = srv.remote("release", "build", "--help")
    assert "server's spec" in " ".join(help_.stdout.split())
    same(srv.remote("release", "build"), srv.local("release", "build"), 0)  # the server's spec: R1 again
    same(srv.remote("release", "list", "--json"), srv.local("release", "list", "--json"), 0)
    same(srv.remote("release", "show", srv.r1[:12]), srv.local("release", "show", srv.r1[:12]), 0)
    same(srv.remote("release", "show", "ffff"), srv.local("release", "show", "ffff"))


def test_plan_answers_as_on_the_server_host_with_its_exit_code(srv):
    same(srv.remote("plan", "staging", "--no-refresh"), srv.local("plan", "staging", "--no-refresh"))
    remote, here = srv.remote("plan", "staging", "--json"), srv.local("plan", "staging", "--json")
    assert remote.returncode == here.returncode == 2 and json.loads(remote.stdout) == json.loads(here.stdout)
    same(srv.remote("plan", "prod"), srv.local("plan", "prod"), 1)  # every error of plan is 1


def test_a_refused_apply_is_the_same_line_and_exit_code(srv):
    same(srv.remote("apply", "production", "--yes"), srv.local("apply", "production", "--yes"), 4)
    pinned = {c["name"]: c["version"] for c in srv.site.ctx.store.get_release(srv.r1).document["manifests"]["r650"]
              ["components"]}
    assert srv.local("block", "bmc", pinned["bmc"], "--reason", "test", "--model", "r650").returncode == 0
    try:
        same(srv.remote("apply", "staging"), srv.local("apply", "staging"), 3)
    finally:
        assert srv.local("unblock", "bmc", pinned["bmc"], "--reason", "test over").returncode == 0


def test_apply_through_the_api_follows_the_rollout_and_ends_as_a_local_apply(srv):
    remote = srv.remote("apply", "staging")
    assert remote.returncode == 0, remote.stderr
    assert re.fullmatch(r"rollout \d+ done in [\d.]+s: 1 done, 0 failed, 0 held\n", remote.stdout), remote.stdout
    srv.site.ctx.store.point_environment("production", srv.r1, "test", "the same situation on production")
    here = srv.local("apply", "production", "--yes")
    assert here.returncode == 0, here.stderr
    assert normal(remote.stdout) == normal(here.stdout)
    assert normal(remote.stderr) == normal(here.stderr)  # rollout N created: ..., canary: NODE
    again = srv.remote("apply", "staging", "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["done"] == [], again.stdout


def test_apply_detach_prints_the_rollout_and_watch_follows_it(srv):
    r = srv.remote("apply", "staging", "--detach")
    assert r.returncode == 0, r.stderr
    rid = re.fullmatch(r"rollout (\d+) started; `provisioner rollout watch \1` follows it\n", r.stdout).group(1)
    watched = srv.remote("rollout", "watch", rid)
    assert watched.returncode == 0 and watched.stdout.splitlines()[-1].startswith(f"rollout {rid} done"), watched


def test_a_plan_saved_through_the_api_is_applied_exactly(srv):
    saved = srv.config / "staging.plan"
    srv.config.mkdir(parents=True, exist_ok=True)
    r = srv.remote("plan", "staging", "-o", str(saved))
    assert r.returncode == 0 and f"plan saved to {saved}" in r.stdout, r.stdout + r.stderr
    applied = srv.remote("apply", str(saved), "--json")
    assert applied.returncode == 0 and json.loads(applied.stdout)["status"] == "done", applied.stderr


def test_rollback_to_an_unapproved_release_is_refused_as_locally(srv):
    template = next((srv.site.spec / "templates").iterdir())
    template.write_text(template.read_text() + "\n# R2: a change nobody approved\n")
    r2 = json.loads(srv.remote("release", "build", "--json").stdout)["id"]  # the server's spec, changed
    assert r2 != srv.r1
    same(srv.remote("rollback", "production", "--to", r2[:12], "--yes"),
         srv.local("rollback", "production", "--to", r2[:12], "--yes"), 3)
    same(srv.remote("rollback", "staging", "--yes"), srv.local("rollback", "staging", "--yes"), 4)


def test_rollout_resume_and_abort_go_through_the_api(srv):
    done = [r for r in json.loads(srv.local("rollout", "list", "--json").stdout) if r["status"] == "done"]
    same(srv.remote("rollout", "abort", str(done[-1]["id"]), "--reason", "x"),
         srv.local("rollout", "abort", str(done[-1]["id"]), "--reason", "x"), 3)
    # two finished rollouts, halted behind the store's back: one resumed from a workstation, one aborted
    first, second = done[0]["id"], done[-1]["id"]
    execute_raw(srv.site.ctx.settings.url, f"UPDATE rollouts SET status = 'halted' WHERE id IN ({first}, {second})")
    resumed = srv.remote("rollout", "resume", str(first), "--reason", "cleared")
    assert resumed.returncode == 0, resumed.stderr
    assert re.fullmatch(rf"rollout {first} done in [\d.]+s: 1 done, 0 failed\n", resumed.stdout), resumed.stdout
    aborted = srv.remote("rollout", "abort", str(second), "--reason", "given up")
    assert aborted.returncode == 0, aborted.stderr
    assert aborted.stdout == f"rollout {second} aborted: given up\n"
    assert aborted.stderr.startswith(f"rollout {second} aborted; `provisioner apply ")


def test_drift_reports_as_locally_and_fixes_through_the_api(srv):
    same(srv.remote("drift"), srv.local("drift"), 0)
    srv.site.lab.site.hand_flash("s1n01", "bios", "0.0.0-by-hand")
    same(srv.remote("drift", "staging", "--json"), srv.local("drift", "staging", "--json"), 2)
    stale = srv.config / "staging.plan"  # saved before the hand flash: no longer holds
    refused = srv.remote("apply", str(stale))
    same(refused, srv.local("apply", str(stale)))
    assert refused.returncode == 1 and "the saved plan no longer holds" in refused.stderr
    fixed = srv.remote("drift", "staging", "--fix")
    assert fixed.returncode == 0, fixed.stderr
    assert "staging: re-provisioned 1, failed 0 (done)" in fixed.stdout
    same(srv.remote("drift", "staging"), srv.local("drift", "staging"), 0)


def test_audit_verify_and_the_node_commands_answer_as_locally(srv):
    same(srv.remote("audit", "verify"), srv.local("audit", "verify"), 0)
    same(srv.remote("node", "list", "--json"), srv.local("node", "list", "--json"), 0)
    same(srv.remote("node", "show", "r1n01", "--json"), srv.local("node", "show", "r1n01", "--json"), 0)
    same(srv.remote("node", "show", "nope"), srv.local("node", "show", "nope"), 4)
    on = srv.remote("node", "maintenance", "on", "r1n01", "--reason", "DIMM swap")
    assert on.returncode == 0 and re.fullmatch(r"r1n01: [a-z-]+ → maintenance\n", on.stdout), on.stderr
    assert srv.site.ctx.store.audit_entries(1)[0]["actor"] == "op1"
    viewer = srv.remote("node", "maintenance", "off", "r1n01", "--reason", "done", as_="view1")
    assert viewer.returncode == 3 and viewer.stderr.startswith("error: view1 (viewer) may not apply"), viewer.stderr
    off = srv.remote("node", "maintenance", "off", "r1n01", "--reason", "done")
    assert (off.returncode, off.stdout) == (0, "r1n01: maintenance → ready\n"), off.stderr


def test_accounts_and_tokens_are_managed_through_the_api_by_an_admin(srv):
    added = srv.remote("user", "add", "carl", "--role", "viewer", "--password-stdin", as_="adm1",
                       stdin=PASSWORD + "\n")
    assert (added.returncode, added.stdout) == (0, "account carl (viewer) created\n"), added.stderr
    refused = srv.remote("user", "add", "dora", "--role", "viewer", "--no-password", as_="op1")
    assert refused.returncode == 3 and refused.stderr == "error: op1 (operator) may not manage users; " \
                                                         "it needs the admin role\n", refused.stderr
    same(srv.remote("user", "list", "--json", as_="adm1"), srv.local("user", "list", "--json"), 0)
    made = srv.remote("token", "create", "--user", "carl", "--name", "ci", "--json", as_="adm1")
    assert made.returncode == 0, made.stderr
    token = json.loads(made.stdout)
    assert token["account"] == "carl" and token["token"].startswith("prv_")
    same(srv.remote("token", "list", "--user", "carl", "--json", as_="adm1"),
         srv.local("token", "list", "--user", "carl", "--json"), 0)
    revoked = srv.remote("token", "revoke", str(token["id"]), as_="adm1")
    assert (revoked.returncode, revoked.stdout) == (0, f"token {token['id']} revoked\n"), revoked.stderr
    disabled = srv.remote("user", "disable", "carl", "--reason", "left", as_="adm1")
    assert (disabled.returncode, disabled.stdout) == (0, "account carl disabled\n"), disabled.stderr
    assert srv.site.ctx.store.audit_entries(1)[0]["actor"] == "adm1"


def test_commands_of_the_server_host_say_so_or_refuse_with_a_server_set(srv):
    r = srv.remote("db", "status")
    assert r.stderr.splitlines()[0].startswith("note: `provisioner db` acts on this host"), r.stderr
    r = srv.remote("audit", "checkpoint")
    assert r.returncode == 2 and r.stderr.startswith("error: `provisioner audit checkpoint` signs with the "
                                                     "server host's key"), r.stderr
