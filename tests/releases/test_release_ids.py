"""The release id is a pure function of the spec's content."""

from __future__ import annotations

import json

import yaml
from helpers import run_cli

from provisioner.releases.build import freeze
from provisioner.spec.loader import load_spec


def release_id(spec_dir) -> str:
    return freeze(load_spec(spec_dir)).id


def test_the_same_spec_gives_the_same_release_id_twice(spec_dir):
    assert release_id(spec_dir) == release_id(spec_dir)


def test_reordered_keys_reformatted_yaml_and_comments_do_not_change_the_id(spec_dir):
    before = release_id(spec_dir)
    for rel in ("inventory.yaml", "policy.yaml", "firmware_manifests/r650.yaml", "boot_profiles.yaml"):
        path = spec_dir / rel
        data = yaml.safe_load(path.read_text())

        def reverse(obj):
            if isinstance(obj, dict):
                return {k: reverse(obj[k]) for k in reversed(list(obj))}
            if isinstance(obj, list):
                return [reverse(x) for x in obj]
            return obj

        # flow style, reversed key order, a new comment: same content
        path.write_text("# reformatted by a test\n" + yaml.safe_dump(reverse(data), sort_keys=False,
                                                                      default_flow_style=True, width=60))
    assert release_id(spec_dir) == before


def test_a_one_character_change_in_a_pinned_version_gives_a_new_id(spec_dir):
    before = release_id(spec_dir)
    m = spec_dir / "firmware_manifests/dl360g10.yaml"
    m.write_text(m.read_text().replace('version: "14.32.1"', 'version: "14.32.2"'))
    assert release_id(spec_dir) != before


def test_a_one_character_change_in_a_template_gives_a_new_id(spec_dir):
    before = release_id(spec_dir)
    t = spec_dir / "templates/local.ipxe.j2"
    t.write_text(t.read_text().replace("exit 1", "exit 2"))
    assert release_id(spec_dir) != before


def test_a_changed_artifact_gives_a_new_id(spec_dir):
    before = release_id(spec_dir)
    kernel = spec_dir / "artifacts/images/ubuntu-24.04/vmlinuz"
    data = bytearray(kernel.read_bytes())
    data[100] ^= 1
    kernel.write_bytes(bytes(data))
    import hashlib

    bp = spec_dir / "boot_profiles.yaml"
    doc = yaml.safe_load(bp.read_text())
    old = doc["profiles"][0]["kernel"]["sha256"]
    bp.write_text(bp.read_text().replace(old, hashlib.sha256(data).hexdigest()))
    assert release_id(spec_dir) != before


def test_release_build_json_prints_the_id_and_is_idempotent(spec_dir, tmp_path):
    data = tmp_path / "data"
    r1 = run_cli("release", "build", "--json", spec=spec_dir, data=data)
    r2 = run_cli("release", "build", "--json", spec=spec_dir, data=data)
    assert r1.returncode == 0, r1.stderr
    first, second = json.loads(r1.stdout), json.loads(r2.stdout)
    assert first["id"] == second["id"] == release_id(spec_dir)
    assert first["created"] is True and second["created"] is False
    listed = json.loads(run_cli("release", "list", "--json", spec=spec_dir, data=data).stdout)
    assert [r["id"] for r in listed] == [first["id"]]


def test_release_diff_names_the_firmware_change_in_operator_words(spec_dir, tmp_path):
    data = tmp_path / "data"
    a = json.loads(run_cli("release", "build", "--json", spec=spec_dir, data=data).stdout)["id"]
    m = spec_dir / "firmware_manifests/r650.yaml"
    import hashlib

    img = spec_dir / "artifacts/firmware/r650/bios-1.14.0.bin"
    digest = hashlib.sha256(img.read_bytes()).hexdigest()
    text = m.read_text()
    old_block = text[text.index("  - name: bios"):text.index("  - name: nic")]
    new_block = (old_block.replace('"1.13.2"', '"1.14.0"').replace("bios-1.13.2.bin", "bios-1.14.0.bin")
                 .replace(old_block.split("sha256: ")[1].split("\n")[0], digest))
    m.write_text(text.replace(old_block, new_block))
    b = json.loads(run_cli("release", "build", "--json", spec=spec_dir, data=data).stdout)["id"]
    r = run_cli("release", "diff", a[:8], b[:8], spec=spec_dir, data=data)
    assert r.returncode == 0, r.stderr
    assert "firmware: r650 bios 1.13.2 → 1.14.0" in r.stdout
    assert "1 change(s)" in r.stdout


def test_a_release_pinning_a_version_blocked_at_run_time_cannot_be_built(spec_dir, tmp_path):
    from provisioner.context import Context, Settings

    data = tmp_path / "data"
    ctx = Context(Settings(spec_dir=spec_dir, data_dir=data))
    ctx.store.block("raid", "5.61.0", "controller drops disks under load", by="ops", incident="INC-1")
    r = run_cli("release", "build", spec=spec_dir, data=data)
    assert r.returncode == 3
    assert "pins raid 5.61.0, which is blocked" in r.stderr
