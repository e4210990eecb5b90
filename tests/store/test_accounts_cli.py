"""`provisioner user` and `provisioner token` on the server host: what an admin types and sees."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

PW = "correct horse battery"


@pytest.fixture
def run(tmp_path):
    def run(*args: str, stdin: str = "", token: str | None = None) -> subprocess.CompletedProcess:
        env = {**os.environ, "PROVISIONER_DATA": str(tmp_path / "data"), "PROVISIONER_SPEC": str(tmp_path)}
        env.pop("PROVISIONER_TOKEN", None)
        if token:
            env["PROVISIONER_TOKEN"] = token
        return subprocess.run([sys.executable, "-m", "provisioner", *args], env=env, input=stdin,
                              capture_output=True, text=True, timeout=60)
    return run


def test_an_admin_bootstraps_accounts_and_tokens_on_the_server_host(run):
    added = run("user", "add", "Bob", "--role", "approver", "--password-stdin", "--json", stdin=PW + "\n")
    assert added.returncode == 0, added.stderr
    assert json.loads(added.stdout) == {"id": 1, "username": "bob", "role": "approver", "disabled": False}

    created = run("token", "create", "--user", "bob", "--name", "laptop", "--days", "30", "--json")
    assert created.returncode == 0, created.stderr
    secret = json.loads(created.stdout)["token"]
    listed = run("token", "list")
    assert "laptop" in listed.stdout and secret not in listed.stdout

    assert run("token", "revoke", "1").stdout.strip() == "token 1 revoked"
    assert run("user", "disable", "bob", "--reason", "left").stdout.strip() == "account bob disabled"
    users = json.loads(run("user", "list", "--json").stdout)
    assert [(u["username"], u["role"], u["disabled"]) for u in users] == [("bob", "approver", True)]

    log = json.loads(run("audit", "log", "--json").stdout)
    assert [e["action"] for e in log] == ["account.add", "token.create", "token.revoke", "account.disable"]
    assert {e["actor"] for e in log} == {f"root@{socket.gethostname()} (local store)"}
    assert {e["auth_method"] for e in log} == {"local-store"}


@pytest.mark.parametrize("args, stdin, code, says", [
    (("user", "add", "", "--role", "viewer", "--password-stdin"), PW, 2, "error: a username cannot be empty"),
    (("user", "add", "a b", "--role", "viewer", "--password-stdin"), PW, 2, "contains whitespace"),
    (("user", "add", "carol", "--role", "viewer", "--password-stdin"), "short", 3, "at least 8 characters"),
    (("user", "add", "carol", "--role", "viewer"), "", 11, "no terminal to ask for the password"),
    (("user", "add", "carol", "--role", "boss", "--no-password"), "", 2, "'boss' is not one of"),
], ids=["empty-name", "spaced-name", "short-password", "no-terminal", "unknown-role"])
def test_a_bad_account_request_is_one_line_and_an_exit_code(run, args, stdin, code, says):
    r = run(*args, stdin=stdin)
    assert r.returncode == code, r.stdout + r.stderr
    assert says in r.stderr and "Traceback" not in r.stderr


def test_with_a_token_only_an_admin_manages_accounts(run):
    run("user", "add", "olga", "--role", "operator", "--no-password")
    token = json.loads(run("token", "create", "--user", "olga", "--name", "ci", "--json").stdout)["token"]
    r = run("user", "add", "mallory", "--role", "admin", "--no-password", token=token)
    assert r.returncode == 3
    assert r.stderr.strip() == "error: olga (operator) may not manage users; it needs the admin role"
    assert [u["username"] for u in json.loads(run("user", "list", "--json").stdout)] == ["olga"]
