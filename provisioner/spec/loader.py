"""Load a spec directory from YAML, validate it, and cross-check it.

Every problem becomes one `SpecProblem` line naming file, line and field; all problems of a
directory are collected and raised together as one `SpecError` (exit code 2).

Layout of a spec directory:
    inventory.yaml            site, credentials references, racks and nodes
    boot_profiles.yaml        install/flash boot profiles and the flasher
    policy.yaml               rollout and staging-gate policy (optional: defaults)
    deny-list.yaml            globally blocked firmware versions (optional)
    firmware_manifests/*.yaml one manifest per hardware model
    templates/                Jinja2 boot templates (digests go into every release)
    artifacts/                images referenced by sha256 (small stand-ins in this repository)
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from provisioner.errors import SpecError, SpecProblem
from provisioner.spec import files
from provisioner.spec.files import SpecFileRefused, SpecLimits
from provisioner.spec.models import (
    ArtifactRef,
    BootProfiles,
    DenyList,
    FirmwareManifest,
    Inventory,
    Policy,
    Spec,
)
from provisioner.spec.yaml_bounded import LimitExceeded, compose_and_construct

Path_ = tuple[Any, ...]


class SourceFile:
    """A parsed YAML file with a map from data path to 1-based line number."""

    def __init__(self, rel: str, data: Any, lines: dict[Path_, int]):
        self.rel, self.data, self.lines = rel, data, lines

    def line(self, path: Path_) -> int | None:
        for n in range(len(path), -1, -1):
            if path[:n] in self.lines:
                return self.lines[path[:n]]
        return None

    def problem(self, path: Path_, message: str, expected: str = "") -> SpecProblem:
        return SpecProblem(self.rel, self.line(path), dotted(path), message, expected)


def _key(k: Any) -> str:
    """A key as errors show it: a field-like name as written, anything else not echoed (it may be data)."""
    text = str(k)
    if len(text) <= 64 and text.isprintable():
        return text
    return f"<key of {len(text):,} characters>"


def dotted(path: Path_) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{_key(p)}" if out else _key(p))
    return out or "(document)"


def parse_yaml(root: Path, rel: str, problems: list[SpecProblem], limits: SpecLimits | None = None
               ) -> SourceFile | None:
    limits = limits or SpecLimits()
    try:
        raw = files.read_file(root, rel, limits.max_file_bytes)
    except FileNotFoundError:
        problems.append(SpecProblem(rel, None, "(file)", "file is missing", f"a YAML file at {root / rel}"))
        return None
    except SpecFileRefused as e:
        problems.append(e.problem)
        return None
    except OSError as e:
        problems.append(SpecProblem(rel, None, "(file)", f"cannot be read: {e.strerror}", "a readable YAML file"))
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        problems.append(SpecProblem(rel, None, "(file)", f"is not UTF-8 text (byte {e.start:,})", "a UTF-8 YAML file"))
        return None
    try:
        node, data = compose_and_construct(text, limits)
    except LimitExceeded as e:
        problems.append(SpecProblem(rel, e.line, e.field, e.message, e.expected))
        return None
    except RecursionError:  # a limit above should have stopped it first; one line all the same
        problems.append(SpecProblem(rel, None, "(syntax)", "nested too deeply", "a flatter structure"))
        return None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else None
        problems.append(SpecProblem(rel, line, "(syntax)", "YAML syntax error: " + " ".join(str(e.problem).split()), "valid YAML"))
        return None
    except yaml.reader.ReaderError as e:  # a character YAML forbids (control characters, BOM in the middle)
        line = text[: e.position].count("\n") + 1
        problems.append(SpecProblem(rel, line, "(syntax)", f"character #x{e.character:04x} is not allowed in YAML",
                                    "printable UTF-8 text"))
        return None
    except yaml.YAMLError as e:
        problems.append(SpecProblem(rel, None, "(syntax)", "YAML error: " + " ".join(str(e).split()), "valid YAML"))
        return None
    lines: dict[Path_, int] = {}
    src = SourceFile(rel, data, lines)
    if node is not None:
        _walk(node, (), lines, src, problems)
    if not isinstance(data, dict):
        problems.append(SpecProblem(rel, 1, "(document)", "is not a mapping", "top-level keys like in the example spec"))
        return None
    return src


def _walk(node: yaml.Node, path: Path_, lines: dict, src: SourceFile, problems: list) -> None:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: set = set()
        for k, v in node.value:
            key = k.value
            if key in seen:
                problems.append(SpecProblem(src.rel, k.start_mark.line + 1, dotted(path + (key,)),
                                            "duplicate key", "each key once"))
            seen.add(key)
            lines[path + (key,)] = k.start_mark.line + 1
            _walk(v, path + (key,), lines, src, problems)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk(item, path + (i,), lines, src, problems)


def _explain(err: dict) -> tuple[str, str]:
    """Turn one pydantic error into (what is wrong, what is expected)."""
    kind, msg, given = err["type"], err["msg"], err.get("input")
    got = f" (got {_value(given)})" if not isinstance(given, dict | list) else ""
    if kind == "missing":
        return "required field is missing", "a value for it"
    if kind == "extra_forbidden":
        return "unknown field", "only the fields the spec format documents (see README)"
    if msg.startswith("Value error, "):
        return "invalid value" + got, msg.removeprefix("Value error, ")
    if msg.startswith("Input should "):
        return "invalid value" + got, msg.removeprefix("Input should ").removeprefix("be ")
    if msg.startswith("String should "):
        return "invalid value" + got, "a string that should " + msg.removeprefix("String should ")
    return msg + got, ""


def _value(v: Any) -> str:
    """A value as errors show it: short ones as written; long ones by their size only (they may be data)."""
    if isinstance(v, str) and (len(v) > 64 or not v.isprintable()):
        return f"a string of {len(v):,} characters"
    try:
        text = repr(v)
    except ValueError:  # an int past Python's digit limit
        return "a very large number"
    return text if len(text) <= 64 else f"a value of {len(text):,} characters"


def validate_model(src: SourceFile, model: type[BaseModel], problems: list[SpecProblem], data: Any = None,
                   prefix: Path_ = ()):
    data = src.data if data is None else data
    if (not prefix and isinstance(data, dict) and data and model.model_fields
            and not any(isinstance(k, str) and k in model.model_fields for k in data)):
        # Not one key of ours: another kind of file (or not YAML meant for us). Listing its keys
        # as unknown fields would print its contents, so say so once instead.
        problems.append(SpecProblem(src.rel, None, "(document)", "none of its top-level keys is a field of this file",
                                    "top-level keys " + ", ".join(model.model_fields)))
        return None
    try:
        return model.model_validate(data)
    except ValidationError as e:
        for err in e.errors():
            loc = prefix + tuple(err["loc"])
            what, expected = _explain(err)
            problems.append(src.problem(loc, what, expected))
        return None


def sha256_file(f) -> str:
    h = hashlib.sha256()
    for chunk in iter(lambda: f.read(1 << 20), b""):
        h.update(chunk)
    return h.hexdigest()


def _check_template(rel: str, data: bytes, problems: list[SpecProblem]) -> None:
    """A boot template must be UTF-8 Jinja2: found by `validate`, not by a node at boot time.

    Only Jinja2's message and line are kept: its exception text would quote the file's line.
    """
    import jinja2

    try:
        jinja2.Environment().parse(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        problems.append(SpecProblem(rel, None, "(file)", f"is not UTF-8 text (byte {e.start:,})", "a UTF-8 template"))
    except jinja2.TemplateSyntaxError as e:
        problems.append(SpecProblem(rel, e.lineno, "(template)", "Jinja2 syntax error: " + " ".join(
            str(e.message).split())[:200], "a valid Jinja2 template"))


def _optional_yaml(root: Path, rel: str, problems: list[SpecProblem], limits: SpecLimits) -> SourceFile | None:
    """Parse `rel` when it exists in any form (lexists: a dangling link or a FIFO is a problem, not absence)."""
    if not (root / rel).is_symlink() and not (root / rel).exists():
        return None
    return parse_yaml(root, rel, problems, limits) or _MISSING


_MISSING = SourceFile("", None, {})  # present but unreadable: the problem is already recorded


def load_spec(root: Path | str, limits: SpecLimits | None = None) -> Spec:
    """Load and cross-check the spec directory at `root`; raise SpecError listing every problem.

    Only regular files inside `root` are read (see `spec.files`), each within `limits`.
    """
    root = Path(root)
    limits = limits or SpecLimits()
    problems: list[SpecProblem] = []
    if not root.is_dir():
        raise SpecError(SpecProblem(str(root), None, "(directory)", "spec directory not found",
                                    "a directory with inventory.yaml (--spec DIR or PROVISIONER_SPEC)"))
    inv_src = parse_yaml(root, "inventory.yaml", problems, limits)
    boot_src = parse_yaml(root, "boot_profiles.yaml", problems, limits)
    inventory = validate_model(inv_src, Inventory, problems) if inv_src else None
    boot = validate_model(boot_src, BootProfiles, problems) if boot_src else None

    policy, policy_src = Policy(), _optional_yaml(root, "policy.yaml", problems, limits)
    if policy_src is not None and policy_src is not _MISSING:
        policy = validate_model(policy_src, Policy, problems) or Policy()

    deny, deny_src = DenyList(), _optional_yaml(root, "deny-list.yaml", problems, limits)
    if deny_src is not None and deny_src is not _MISSING:
        deny = validate_model(deny_src, DenyList, problems) or DenyList()

    manifests: dict[str, FirmwareManifest] = {}
    manifest_src: dict[str, SourceFile] = {}
    try:
        manifest_files = [f for f in files.tree_files(root, "firmware_manifests", problems)
                          if f.count("/") == 1 and f.endswith(".yaml")]
    except SpecFileRefused as e:
        problems.append(e.problem)
        manifest_files = []
    for rel in manifest_files:
        src = parse_yaml(root, rel, problems, limits)
        m = validate_model(src, FirmwareManifest, problems) if src else None
        if m is None:
            continue
        if m.model in manifests:
            problems.append(src.problem(("model",), f"model {m.model!r} already has a manifest in "
                                        f"{manifest_src[m.model].rel}", "one manifest per hardware model"))
            continue
        stem = rel.rsplit("/", 1)[-1].removesuffix(".yaml")
        if stem != m.model:
            problems.append(src.problem(("model",), f"file name {stem + '.yaml'!r} does not match model {m.model!r}",
                                        f"the file to be named {m.model}.yaml"))
        manifests[m.model], manifest_src[m.model] = m, src

    templates: dict[str, str] = {}
    try:
        template_files = files.tree_files(root, "templates", problems)
    except SpecFileRefused as e:
        problems.append(e.problem)
        template_files = []
    for rel in template_files:
        try:
            data = files.read_file(root, rel, limits.max_file_bytes)
            templates[rel.removeprefix("templates/")] = hashlib.sha256(data).hexdigest()
            if rel.endswith(".j2"):
                _check_template(rel, data, problems)
        except SpecFileRefused as e:
            problems.append(e.problem)
        except OSError as e:
            problems.append(SpecProblem(rel, None, "(file)", f"cannot be read: {e.strerror}", "a readable file"))

    checker = _CrossCheck(root, problems)
    if policy_src and policy.staging_gate.environment not in policy.environments:
        problems.append(policy_src.problem(("staging_gate", "environment"), "environment "
                                           f"{policy.staging_gate.environment!r} is not declared",
                                           f"one of {list(policy.environments)}, or declare it under environments:"))
    if inventory:
        checker.inventory(inv_src, inventory, manifests, boot, policy)
    if boot:
        checker.boot(boot_src, boot, templates)
    for model, m in manifests.items():
        checker.manifest(manifest_src[model], m, deny)

    if problems:
        raise SpecError(problems)
    return Spec(inventory=inventory, manifests=manifests, deny_list=deny, boot=boot, policy=policy,
                templates=templates)


class _CrossCheck:
    """Checks that span files: references resolve, nothing is duplicated, nothing blocked is pinned."""

    def __init__(self, root: Path, problems: list[SpecProblem]):
        self.root, self.problems, self._digests = root, problems, {}

    def artifact(self, src: SourceFile, path: Path_, ref: ArtifactRef) -> None:
        try:
            f, _ = files.check_file(self.root, ref.file)
        except SpecFileRefused as e:
            self.problems.append(src.problem(path + ("file",), f"{ref.file!r} {e.problem.message}",
                                             e.problem.expected))
            return
        except FileNotFoundError:
            self.problems.append(src.problem(path + ("file",), f"artifact {ref.file!r} does not exist",
                                             "an existing file, relative to the spec directory"))
            return
        if f not in self._digests:
            try:
                with files.open_file(self.root, ref.file) as fh:  # no size limit: images are big
                    self._digests[f] = (sha256_file(fh), fh.seek(0, 2))
            except SpecFileRefused as e:
                self.problems.append(src.problem(path + ("file",), f"{ref.file!r} {e.problem.message}",
                                                 e.problem.expected))
                return
        digest, size = self._digests[f]
        if digest != ref.sha256:
            self.problems.append(src.problem(path + ("sha256",), f"{ref.file} hashes to {digest}",
                                             "the sha256 of the file's bytes"))
        elif size != ref.size:
            self.problems.append(src.problem(path + ("size",), f"{ref.file} is {size} bytes, not {ref.size}",
                                             f"size: {size}"))

    def inventory(self, src, inv, manifests, boot, policy) -> None:
        names, macs, bmcs = {}, {}, {}
        profiles = {p.name for p in boot.profiles} if boot else None
        for ri, rack in enumerate(inv.racks):
            for ni, node in enumerate(rack.nodes):
                p = ("racks", ri, "nodes", ni)
                if node.name in names:
                    self.problems.append(src.problem(p + ("name",), f"node name {node.name!r} is used twice "
                                                     f"(also line {names[node.name]})", "unique node names"))
                names.setdefault(node.name, src.line(p + ("name",)))
                for mi, mac in enumerate(node.macs):
                    if mac in macs:
                        self.problems.append(src.problem(p + ("macs", mi), f"MAC {mac} is also on node {macs[mac]}",
                                                         "each MAC on one node"))
                    macs.setdefault(mac, node.name)
                key = (node.bmc.address, node.bmc.port)
                if key in bmcs:
                    self.problems.append(src.problem(p + ("bmc", "address"), f"BMC {key[0]}:{key[1]} is also "
                                                     f"node {bmcs[key]}'s", "one BMC address per node"))
                bmcs.setdefault(key, node.name)
                if node.model not in manifests:
                    self.problems.append(src.problem(p + ("model",), f"no firmware manifest for model {node.model!r}",
                                                     f"firmware_manifests/{node.model}.yaml"))
                if node.bmc.credentials not in inv.credentials:
                    self.problems.append(src.problem(p + ("bmc", "credentials"), f"unknown credentials "
                                                     f"{node.bmc.credentials!r}", "a key of credentials:"))
                if profiles is not None and node.boot_profile not in profiles:
                    self.problems.append(src.problem(p + ("boot_profile",), f"unknown boot profile "
                                                     f"{node.boot_profile!r}", f"one of {sorted(profiles)}"))
                if node.environment not in policy.environments:
                    self.problems.append(src.problem(p + ("environment",), f"unknown environment "
                                                     f"{node.environment!r}", f"one of {list(policy.environments)} "
                                                     "(declared under environments: in policy.yaml)"))

    def boot(self, src, boot, templates) -> None:
        names = {}
        for i, prof in enumerate(boot.profiles):
            p = ("profiles", i)
            if prof.name in names:
                self.problems.append(src.problem(p + ("name",), f"profile {prof.name!r} defined twice",
                                                 "unique profile names"))
            names[prof.name] = prof
            for field in ("kernel", "initrd", "rootfs"):
                ref = getattr(prof, field)
                if ref is not None:
                    self.artifact(src, p + (field,), ref)
            if prof.template not in templates:
                self.problems.append(src.problem(p + ("template",), f"template {prof.template!r} not found",
                                                 "a file under templates/"))
        fl = names.get(boot.flasher)
        if fl is None or fl.kind != "flash":
            self.problems.append(src.problem(("flasher",), f"{boot.flasher!r} is not a profile of kind flash",
                                             "the name of a profile with kind: flash"))

    def manifest(self, src, m: FirmwareManifest, deny: DenyList) -> None:
        blocked = {(b.component, b.version): b for b in deny.blocked if b.model in (None, m.model)}
        blocked.update({(b.component, b.version): b for b in m.blocked})
        seen = set()
        for i, c in enumerate(m.components):
            p = ("components", i)
            if c.name in seen:
                self.problems.append(src.problem(p + ("name",), f"component {c.name!r} pinned twice",
                                                 "one entry per component"))
            seen.add(c.name)
            self.artifact(src, p + ("image",), c.image)
            b = blocked.get((c.name, c.version))
            if b:
                self.problems.append(src.problem(p + ("version",), f"{c.name} {c.version} is blocked: {b.reason}",
                                                 "a version that is not on the deny-list"))
            allowed = m.allowed.get(c.name)
            if allowed is not None and c.version not in allowed:
                self.problems.append(src.problem(p + ("version",), f"{c.name} {c.version} is not in allowed",
                                                 f"one of {allowed}"))
