"""Every malformed spec file gets one line per problem — FILE:LINE: FIELD: what; expected — exit 2, no traceback."""

from __future__ import annotations

import re

import pytest
from helpers import run_cli

# (file, text to replace, replacement, field named in the error, words of the error, the line's anchor)
CASES = [
    ("inventory.yaml", "firmware: uefi\n", "firmware: efi\n", "racks[0].nodes[0].firmware",
     "invalid value (got 'efi'); expected 'uefi' or 'bios'", "firmware: efi"),
    ("inventory.yaml", '["52:54:00:0a:01:01"]', '["52:54:00:0a:01:zz"]', "racks[0].nodes[0].macs",
     "not a MAC address", "52:54:00:0a:01:zz"),
    ("inventory.yaml", '["52:54:00:0a:01:02"]', '["52:54:00:0a:01:01"]', "racks[0].nodes[1].macs[0]",
     "also on node r1n01", '["52:54:00:0a:01:01"]\n        model: r650\n        environment: production\n'
     '        boot_profile: ubuntu-2404\n        firmware: uefi\n        bmc: {driver: ipmi, address: 127.0.11.2'),
    ("inventory.yaml", "model: r650\n", "model: r750\n", "racks[0].nodes[0].model",
     "no firmware manifest for model 'r750'", "model: r750"),
    ("inventory.yaml", "        environment: production\n        boot_profile: ubuntu-2404\n        firmware: uefi\n"
     "        bmc: {driver: ipmi, address: 127.0.11.1,",
     "        boot_profile: ubuntu-2404\n        firmware: uefi\n        bmc: {driver: ipmi, address: 127.0.11.1,",
     "racks[0].nodes[0].environment", "required field is missing", "- name: r1n01"),
    ("inventory.yaml", "site: lab1\n", "site: lab1\ncolour: red\n", "colour", "unknown field", "colour: red"),
    ("inventory.yaml", "address: 127.0.11.2,", "address: 127.0.11.1,", "racks[0].nodes[1].bmc.address",
     "BMC 127.0.11.1:6230 is also node r1n01's", "address: 127.0.11.1, port: 6230, credentials: lab}\n      - name: r1n03"),
    ("inventory.yaml", "credentials: lab}", "credentials: lba}", "racks[0].nodes[0].bmc.credentials",
     "unknown credentials 'lba'", "credentials: lba}"),
    ("inventory.yaml", "racks:\n  - name: r1\n", "racks:\n  - name: r1\n   oops: [\n", "(syntax)",
     "YAML syntax error", None),
    ("firmware_manifests/r650.yaml", "sha256: 5d8046cb", "sha256: XYZ046cb", "components[1].image.sha256",
     "64 lowercase hex digits", "sha256: XYZ046cb"),
    ("firmware_manifests/r650.yaml", "sha256: 5d8046cb", "sha256: 6d8046cb", "components[1].image.sha256",
     "hashes to 5d8046cb", "sha256: 6d8046cb"),
    ("firmware_manifests/r650.yaml", "file: artifacts/firmware/r650/nic-22.31.6.bin",
     "file: artifacts/firmware/r650/nic-22.31.7.bin", "components[2].image.file", "does not exist", "nic-22.31.7"),
    ("firmware_manifests/r650.yaml", 'version: "1.13.2"', 'version: "1.12.1"', "components[1].version",
     "bios 1.12.1 is blocked: hangs at POST", 'version: "1.12.1"\n    method'),
    ("policy.yaml", "wave_size: 4 ", "wave_size: four ", "rollout.wave_size", "invalid value (got 'four'); expected a valid integer",
     "wave_size: four"),
    ("policy.yaml", "min_nodes: 4 ", "min_nodes: 0 ", "staging_gate.min_nodes", "greater than or equal to 1",
     "min_nodes: 0"),
    ("boot_profiles.yaml", "template: install.ipxe.j2", "template: instal.ipxe.j2", "profiles[0].template",
     "template 'instal.ipxe.j2' not found", "instal.ipxe.j2"),
    ("boot_profiles.yaml", "  - name: flasher\n    kind: flash\n", "  - name: flasher\n    kind: flash\n    kind: install\n",
     "profiles[1].kind", "duplicate key", "    kind: install\n    os: provisioner"),
    ("deny-list.yaml", "    by: sam\n", "", "blocked[0].by", "required field is missing", "  - component: nic"),
]


def line_of(text: str, anchor: str) -> int:
    return text[: text.index(anchor)].count("\n") + 1


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}:{c[3]}" for c in CASES])
def test_a_malformed_spec_file_gets_one_line_naming_file_line_and_field(case, spec_dir, tmp_path):
    rel, old, new, field, words, anchor = case
    path = spec_dir / rel
    text = path.read_text()
    assert old in text, f"test case out of date: {old!r} not in {rel}"
    text = text.replace(old, new, 1)
    path.write_text(text)

    r = run_cli("validate", spec=spec_dir, data=tmp_path / "data")

    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
    ours = [e for e in errors if e.startswith(f"error: {rel}:") and f": {field}: " in e]
    assert ours, f"no error naming {rel} and {field}:\n{r.stderr}"
    assert any(words in e for e in ours), r.stderr
    if anchor is not None:
        expected_line = line_of(text, anchor)
        assert any(e.startswith(f"error: {rel}:{expected_line}: {field}:") for e in ours), (expected_line, ours)
    else:
        assert re.match(rf"error: {re.escape(rel)}:\d+: ", ours[0])


def test_every_problem_of_a_spec_is_reported_at_once(spec_dir, tmp_path):
    inv = spec_dir / "inventory.yaml"
    inv.write_text(inv.read_text().replace("firmware: uefi\n", "firmware: efi\n", 2))
    r = run_cli("validate", spec=spec_dir, data=tmp_path / "data")
    assert r.returncode == 2
    assert sum(1 for ln in r.stderr.splitlines() if ln.startswith("error: inventory.yaml:")) == 2
    assert "2 problem(s) in the spec" in r.stderr


def test_a_missing_spec_directory_is_one_line_not_a_traceback(tmp_path):
    r = run_cli("validate", spec=tmp_path / "nowhere", data=tmp_path / "data")
    assert r.returncode == 2
    assert "spec directory not found" in r.stderr and "Traceback" not in r.stderr
