"""Fuzzing the spec loader with mutated copies of the example spec's YAML files: whatever the bytes, the
answer is a Spec or SpecError problems of one line each, never another exception; `validate` through the
CLI exits 0 or 2. Kept to about 20 s of examples (hypothesis, derandomized so CI runs the same ones)."""

from __future__ import annotations

import shutil

import pytest
from helpers import copy_spec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from inproc import run_main

from provisioner.errors import SpecError
from provisioner.spec.loader import load_spec, parse_yaml, validate_model
from provisioner.spec.models import BootProfiles, DenyList, FirmwareManifest, Inventory, Policy

MODELS = {"inventory.yaml": Inventory, "policy.yaml": Policy, "deny-list.yaml": DenyList,
          "boot_profiles.yaml": BootProfiles, "firmware_manifests/r650.yaml": FirmwareManifest}

# Values a hostile or careless hand puts where a scalar was: aliases, tags, deep or unterminated
# structures, huge numbers, control characters, merge keys, YAML 1.1 surprises.
HOSTILE = ["*a", "&a [1, *a]", "!!python/object/apply:os.system [true]", "!!binary AAAA", "9" * 30, "1" * 5000,
           "[" * 60 + "]" * 60, "{a: ", "[1, 2", "~", "1e999", "-0x1F", "0o777", "2001-01-01", "no", "<<: *a",
           "\x00", "\x1b[31m", "'unterminated", '"\\u0000"', "\ufeff", "? complex", "- - -", "|\n  block", ">-",
           "&x {a: &y [*x]}", "!!set {a, b}", "!!omap [a: 1]", "%YAML 1.1", "---\n---", "...", "@", "`", "é" * 100]

st_value = st.one_of(st.sampled_from(HOSTILE), st.text(max_size=40), st.integers(), st.floats())


@st.composite
def mutated(draw, text: str) -> str:
    lines = text.splitlines(keepends=True)
    for _ in range(draw(st.integers(1, 4))):
        if not lines:
            lines = [""]
        i = draw(st.integers(0, len(lines) - 1))
        op = draw(st.sampled_from(["value", "insert", "delete", "duplicate", "indent", "truncate", "bytes"]))
        if op == "value" and ":" in lines[i]:
            key = lines[i].split(":", 1)[0]
            lines[i] = f"{key}: {draw(st_value)}\n"
        elif op == "insert":
            lines.insert(i, f"{draw(st.text(max_size=30))}: {draw(st_value)}\n")
        elif op == "delete":
            del lines[i]
        elif op == "duplicate":
            lines.insert(i, lines[i])
        elif op == "indent":
            lines[i] = " " * draw(st.integers(0, 9)) + lines[i].lstrip(" ")
        elif op == "truncate":
            lines = lines[:i] + [lines[i][: draw(st.integers(0, len(lines[i])))]]
        else:
            pos = draw(st.integers(0, len(lines[i])))
            lines[i] = lines[i][:pos] + draw(st.text(min_size=1, max_size=8)) + lines[i][pos:]
    return "".join(lines)


@pytest.fixture(scope="module")
def spec_copy(tmp_path_factory):
    return copy_spec(tmp_path_factory.mktemp("fuzz") / "spec")


FUZZ = settings(max_examples=50, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])


def assert_one_line_problems(problems) -> None:
    for p in problems:
        assert "\n" not in str(p) and "\r" not in str(p), repr(str(p))
        assert len(str(p)) < 400, str(p)


@pytest.mark.parametrize("rel", list(MODELS))
@FUZZ
@given(data=st.data())
def test_a_mutated_spec_file_gives_one_line_problems_and_no_other_exception(spec_copy, rel, data):
    from helpers import REPO

    original = (REPO / rel).read_text()
    text = data.draw(mutated(original))
    (spec_copy / rel).write_text(text, encoding="utf-8", errors="surrogatepass")
    problems = []
    src = parse_yaml(spec_copy, rel, problems)
    if src is not None:
        validate_model(src, MODELS[rel], problems)
    assert_one_line_problems(problems)


@settings(FUZZ, max_examples=10)
@given(data=st.data())
def test_validate_on_a_mutated_spec_exits_0_or_2_with_one_line_per_problem(spec_copy, tmp_path_factory, capsys,
                                                                           data):
    from helpers import REPO

    rel = data.draw(st.sampled_from(list(MODELS)))
    (spec_copy / rel).write_text(data.draw(mutated((REPO / rel).read_text())), encoding="utf-8",
                                 errors="surrogatepass")
    try:
        r = run_main(capsys, "validate", spec=spec_copy, data=tmp_path_factory.getbasetemp() / "fuzz-data")
        assert r.code in (0, 2), r.err
        assert all(ln.startswith("error: ") or ln.endswith("problem(s) in the spec") for ln in r.err_lines), r.err
        if r.code == 0:
            load_spec(spec_copy)  # a spec validate accepts loads
    finally:
        shutil.copy2(REPO / rel, spec_copy / rel)


def test_the_loader_raises_only_spec_error_for_a_fuzzed_directory_entry(spec_copy):
    # sanity: the unmutated copy loads, so every failure above comes from a mutation
    try:
        load_spec(spec_copy)
    except SpecError as e:  # pragma: no cover - would mean the fixture is broken
        pytest.fail(f"the example spec copy does not load: {e}")
