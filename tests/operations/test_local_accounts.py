"""On the server host with a personal token (PROVISIONER_TOKEN), the operations hold the account to
the matrix as the API does: a viewer cannot block or abort a rollout, and unblocking takes two people."""

from __future__ import annotations

from helpers import run_cli

from provisioner.context import Context, Settings


def test_a_token_on_the_server_host_is_held_to_the_matrix_and_the_two_person_unblock(spec_dir, tmp_path):
    data = tmp_path / "data"
    accounts = Context(Settings(spec_dir=spec_dir, data_dir=data)).store.accounts
    tokens = {}
    for name, role in (("vic", "viewer"), ("otto", "operator"), ("ann", "approver")):
        accounts.add(name, role, "test set-up")
        tokens[name] = accounts.create_token(name, "tests", "test set-up")[0]

    def as_(name, *args):
        return run_cli(*args, spec=spec_dir, data=data, env={"PROVISIONER_TOKEN": tokens[name]} if name else None)

    r = as_("vic", "block", "bios", "9.9.9", "--reason", "INC-3")
    assert r.returncode == 3 and r.stderr.strip() == "error: vic (viewer) may not block; it needs the operator role"
    r = as_("vic", "rollout", "abort", "1", "--reason", "mine now")
    assert r.returncode == 3 and "vic (viewer) may not apply" in r.stderr, r.stderr
    assert as_("otto", "block", "bios", "9.9.9", "--reason", "INC-3").returncode == 0
    asked = as_("otto", "unblock", "bios", "9.9.9", "--reason", "vendor fix")
    assert asked.returncode == 0 and "requested by otto" in asked.stdout, asked.stderr
    assert as_("otto", "unblock", "bios", "9.9.9", "--reason", "again", "--confirm").returncode == 3
    store = Context(Settings(spec_dir=spec_dir, data_dir=data)).store
    assert [b["version"] for b in store.active_blocks()] == ["9.9.9"], "lifted by one person"
    done = as_("ann", "unblock", "bios", "9.9.9", "--reason", "checked", "--confirm")
    assert done.returncode == 0 and done.stdout.startswith("lifted 1 block(s) on bios 9.9.9"), done.stderr
    # direct store access (no token) is the installation's root: one step, as before
    assert as_(None, "block", "bios", "9.9.8", "--reason", "INC-4").returncode == 0
    root = as_(None, "unblock", "bios", "9.9.8", "--reason", "false alarm")
    assert root.returncode == 0 and root.stdout.startswith("lifted 1 block(s)"), root.stderr
