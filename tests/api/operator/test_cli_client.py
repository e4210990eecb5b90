"""The CLI as a client: `provisioner login --server URL`, then status, gate, approve, block and
rollout list/show go through the operator API with the output and exit codes of local mode."""

from __future__ import annotations

import json
import os
import stat

from helpers import run_cli
from operator_api import PASSWORD


def client(api, tmp_path, *args, stdin: str | None = None, env: dict | None = None):
    """`provisioner ARGS` on a workstation: its own config directory, no spec and no store of its own."""
    import subprocess
    import sys

    e = {k: v for k, v in os.environ.items() if not k.startswith("PROVISIONER_")}
    e.update({"XDG_CONFIG_HOME": str(tmp_path / "config"), "PROVISIONER_SPEC": str(tmp_path / "no-spec"),
              "PROVISIONER_DATA": str(tmp_path / "no-data"), **(env or {})})
    return subprocess.run([sys.executable, "-m", "provisioner", *args], env=e, capture_output=True, text=True,
                          input=stdin, timeout=300)


def local(api, *args, token: str | None = None):
    """The same command on the server host (direct store access, or a token there)."""
    return run_cli(*args, spec=api.site.spec, data=api.site.data,
                   env={"PROVISIONER_TOKEN": api.tokens[token]} if token else None)


def test_login_keeps_a_token_0600_and_commands_answer_as_in_local_mode(api, tmp_path):
    who = api.account("cli-approver", "approver")
    r = client(api, tmp_path, "login", "--server", f"http://127.0.0.1:{api.port}", "--user", who,
               "--password-stdin", stdin=PASSWORD + "\n")
    assert r.returncode == 0, r.stderr
    assert f"signed in to http://127.0.0.1:{api.port} as {who} (approver)" in r.stdout
    saved = tmp_path / "config" / "provisioner" / "login.json"
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert json.loads(saved.read_text())["token"].startswith("prv_")

    # the gate: the same JSON and exit code (1: not yet) through the API as on the server host
    remote, here = client(api, tmp_path, "gate", api.r1[:12], "--json"), local(api, "gate", api.r1[:12], "--json")
    assert (remote.returncode, json.loads(remote.stdout)) == (here.returncode, json.loads(here.stdout)) \
        and remote.returncode == 1
    remote, here = client(api, tmp_path, "gate", api.r1[:12]), local(api, "gate", api.r1[:12])
    assert remote.stdout == here.stdout and "NOT YET" in remote.stdout

    remote = client(api, tmp_path, "status", "--no-refresh", "--json")
    here = local(api, "status", "--no-refresh", "--json")
    assert remote.returncode == here.returncode == 0
    assert json.loads(remote.stdout) == json.loads(here.stdout)

    remote, here = client(api, tmp_path, "rollout", "list", "--json"), local(api, "rollout", "list", "--json")
    assert json.loads(remote.stdout) == json.loads(here.stdout)
    assert not (tmp_path / "no-data").exists(), "the client opened a store of its own"


def test_a_refusal_through_the_api_is_the_same_line_and_exit_code(api, tmp_path):
    env = {"PROVISIONER_SERVER": f"http://127.0.0.1:{api.port}", "PROVISIONER_TOKEN": api.tokens["author1"]}
    remote = client(api, tmp_path, "approve", api.r1[:12], env=env)
    here = local(api, "approve", api.r1[:12], token="author1")
    assert remote.returncode == here.returncode == 3
    assert remote.stderr == here.stderr and "author1 built release" in remote.stderr
    viewer = {**env, "PROVISIONER_TOKEN": api.tokens["viewer1"]}
    r = client(api, tmp_path, "block", "bios", "0.0.3-cli", "--reason", "test", env=viewer)
    assert r.returncode == 3 and r.stderr.startswith("error: viewer1 (viewer) may not block"), r.stderr
    r = client(api, tmp_path, "gate", api.r1[:12], env={**env, "PROVISIONER_TOKEN": "prv_wrong"})
    assert r.returncode == 11 and r.stderr.startswith("error: unknown API token"), r.stderr
    r = client(api, tmp_path, "block", "bios", "0.0.3-cli", "--reason", "test",
               env={**env, "PROVISIONER_TOKEN": api.tokens["operator1"]})
    assert r.returncode == 0 and r.stdout.startswith("blocked bios 0.0.3-cli"), r.stderr
    assert api.site.ctx.store.audit_entries(1)[0]["actor"] == "operator1"


def test_unblocking_from_a_workstation_takes_two_people_and_promote_and_history_answer_as_locally(api, tmp_path):
    env = {"PROVISIONER_SERVER": f"http://127.0.0.1:{api.port}"}

    def as_(name, *args):
        return client(api, tmp_path, *args, env={**env, "PROVISIONER_TOKEN": api.tokens[name]})

    assert as_("operator1", "block", "bios", "0.0.4-cli", "--reason", "INC-2").returncode == 0
    asked = as_("operator1", "unblock", "bios", "0.0.4-cli", "--reason", "vendor fix")
    assert asked.returncode == 0 and "requested by operator1" in asked.stdout, asked.stderr
    itself = as_("operator1", "unblock", "bios", "0.0.4-cli", "--reason", "me again", "--confirm")
    assert itself.returncode == 3 and "may not confirm an unblock" in itself.stderr
    assert any(b["version"] == "0.0.4-cli" for b in api.site.ctx.store.active_blocks())
    done = as_("approver1", "unblock", "bios", "0.0.4-cli", "--reason", "checked", "--confirm")
    assert done.returncode == 0 and done.stdout.startswith("lifted 1 block(s) on bios 0.0.4-cli"), done.stderr
    assert not any(b["version"] == "0.0.4-cli" for b in api.site.ctx.store.active_blocks())

    promoted = as_("operator1", "promote", api.r1[:12], "--to", "staging")
    assert promoted.returncode == 0 and promoted.stdout.startswith(f"staging → {api.r1[:12]}"), promoted.stderr
    assert api.site.ctx.store.audit_entries(1)[0]["actor"] == "operator1"
    remote, here = as_("viewer1", "history", "--json"), local(api, "history", "--json")
    assert json.loads(remote.stdout) == json.loads(here.stdout)
