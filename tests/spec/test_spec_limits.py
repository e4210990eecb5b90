"""A small spec file cannot cost without bound: alias expansion, nesting depth, integer size and file
size are limited, and each refusal is one line naming the file (exit 2), never a traceback."""

from __future__ import annotations

import re

import pytest
from inproc import run_main


def laughs(levels: int, width: int = 9) -> str:
    """The 'billion laughs' document: each level is `width` aliases of the one before."""
    lines = [f"l0: &l0 [{', '.join(['lol'] * width)}]"]
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


def errors(r, rel: str) -> list[str]:
    return [ln for ln in r.err_lines if ln.startswith(f"error: {rel}")]


@pytest.mark.parametrize("levels", [7, 9])
def test_a_billion_laughs_policy_is_refused_in_one_line(spec_dir, tmp_path, capsys, levels):
    doc = laughs(levels)
    assert len(doc) < 500  # a few hundred bytes
    (spec_dir / "policy.yaml").write_text(doc)
    r = run_main(capsys, "validate", spec=spec_dir, data=tmp_path / "data")
    assert r.code == 2
    ours = errors(r, "policy.yaml")
    assert len(ours) == 1, r.err
    m = re.fullmatch(r"error: policy\.yaml: \(alias\): aliases expand to ([\d,]+) nodes \(([\d,]+) more than "
                     r"written\); expected at most 10,000 added by aliases; write the data out instead", ours[0])
    assert m and int(m[1].replace(",", "")) > 9 ** (levels - 1), ours[0]


def test_an_alias_inside_its_own_anchor_is_refused(spec_dir, tmp_path, capsys):
    (spec_dir / "deny-list.yaml").write_text("blocked: &me\n  - *me\n")
    r = run_main(capsys, "validate", spec=spec_dir, data=tmp_path / "data")
    assert r.code == 2
    assert errors(r, "deny-list.yaml") == ["error: deny-list.yaml:1: (alias): an alias inside its own anchor "
                                           "(a recursive structure); expected data without self-reference"], r.err


def test_a_few_anchors_for_shared_settings_are_still_fine(spec_dir, tmp_path, capsys):
    p = spec_dir / "policy.yaml"
    text = p.read_text().replace("  timeouts:", "  timeouts: &t").replace(
        "staging_gate:", "x_shared: *t\nstaging_gate:", 1)
    p.write_text(text.replace("x_shared: *t\n", ""))
    r = run_main(capsys, "validate", spec=spec_dir, data=tmp_path / "data")
    assert r.code == 0, r.err


@pytest.mark.parametrize("depth", [40, 100_000])
def test_deeply_nested_yaml_is_one_line(spec_dir, tmp_path, capsys, depth):
    (spec_dir / "policy.yaml").write_text("rollout: " + "[" * depth + "]" * depth + "\n")
    r = run_main(capsys, "validate", spec=spec_dir, data=tmp_path / "data")
    assert r.code == 2
    assert errors(r, "policy.yaml") == ["error: policy.yaml:1: (syntax): nested deeper than 32 levels; "
                                        "expected a flatter structure"], r.err


def test_aliases_that_nest_past_the_depth_limit_are_refused(spec_dir, tmp_path, capsys):
    lines = ["a0: &a0 " + "[" * 20 + "x" + "]" * 20]
    lines += [f"a{i}: &a{i} " + "[" * 20 + f"*a{i - 1}" + "]" * 20 for i in range(1, 4)]
    (spec_dir / "policy.yaml").write_text("\n".join(lines) + "\n")
    r = run_main(capsys, "validate", spec=spec_dir, data=tmp_path / "data")
    assert r.code == 2
    assert [e.split(": ", 3)[2:] for e in errors(r, "policy.yaml")] == [
        ["(alias)", "aliases expand to more than 32 levels of nesting; expected fewer aliases inside aliases"]]


def wave_size_line(policy) -> int:
    return next(i for i, text in enumerate(policy.read_text().splitlines(), 1) if "wave_size" in text)


def test_a_five_thousand_digit_integer_is_one_line(spec_dir, tmp_path, capsys):
    p = spec_dir / "policy.yaml"
    p.write_text(p.read_text().replace("wave_size: 4 ", "wave_size: " + "9" * 5000 + " "))
    r = run_main(capsys, "validate", spec=spec_dir, data=tmp_path / "data")
    assert r.code == 2
    line = wave_size_line(p)
    assert errors(r, "policy.yaml") == [f"error: policy.yaml:{line}: (value): an integer of 5000 digits; "
                                        "expected at most 20 digits (quote it if it is a name)"], r.err


def test_a_five_thousand_digit_string_in_a_number_field_is_one_line_without_the_digits(spec_dir, tmp_path, capsys):
    p = spec_dir / "policy.yaml"
    p.write_text(p.read_text().replace("wave_size: 4 ", "wave_size: '" + "9" * 5000 + "' "))
    r = run_main(capsys, "validate", spec=spec_dir, data=tmp_path / "data")
    assert r.code == 2
    ours = errors(r, "policy.yaml")
    assert len(ours) == 1 and ours[0].startswith(f"error: policy.yaml:{wave_size_line(p)}: rollout.wave_size: ")
    assert "9999" not in r.err


def test_a_spec_file_over_the_size_limit_is_refused_without_being_parsed(spec_dir, tmp_path, capsys):
    p = spec_dir / "deny-list.yaml"
    p.write_text(p.read_text() + ("# padding\n" * 110_000))
    r = run_main(capsys, "validate", spec=spec_dir, data=tmp_path / "data")
    assert r.code == 2
    size = p.stat().st_size
    assert errors(r, "deny-list.yaml") == [
        f"error: deny-list.yaml: (file): is {size:,} bytes, more than the 1,048,576 allowed; expected a smaller "
        "file, or a higher limit (PROVISIONER_SPEC_MAX_FILE_BYTES or --spec-max-file-bytes)"], r.err
    r = run_main(capsys, "--spec-max-file-bytes", str(size), "validate", spec=spec_dir, data=tmp_path / "data")
    assert r.code == 0, r.err


def test_the_file_size_limit_also_reads_from_the_environment_and_covers_templates(spec_dir, tmp_path, capsys,
                                                                                  monkeypatch):
    monkeypatch.setenv("PROVISIONER_SPEC_MAX_FILE_BYTES", "2000")
    r = run_main(capsys, "validate", spec=spec_dir, data=tmp_path / "data")
    assert r.code == 2
    assert any(e.startswith("error: inventory.yaml: (file): is ") and "more than the 2,000 allowed" in e
               for e in r.err_lines), r.err
    big = spec_dir / "templates" / "flasher.json.j2"
    monkeypatch.delenv("PROVISIONER_SPEC_MAX_FILE_BYTES")
    big.write_text(big.read_text() + "{# " + "x" * (1 << 20) + " #}\n")
    r = run_main(capsys, "validate", spec=spec_dir, data=tmp_path / "data")
    assert r.code == 2 and any(e.startswith("error: templates/flasher.json.j2: (file): is ") for e in r.err_lines)
