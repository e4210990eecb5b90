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
from provisioner.spec.models import (
    ArtifactRef,
    BootProfiles,
    DenyList,
    FirmwareManifest,
    Inventory,
    Policy,
    Spec,
)

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


def dotted(path: Path_) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(document)"


def parse_yaml(root: Path, rel: str, problems: list[SpecProblem]) -> SourceFile | None:
    path = root / rel
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        problems.append(SpecProblem(rel, None, "(file)", "file is missing", f"a YAML file at {path}"))
        return None
    except (OSError, UnicodeDecodeError) as e:
        problems.append(SpecProblem(rel, None, "(file)", f"cannot be read: {e}", "a UTF-8 YAML file"))
        return None
    try:
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else None
        problems.append(SpecProblem(rel, line, "(syntax)", f"YAML syntax error: {e.problem}", "valid YAML"))
        return None
    except yaml.YAMLError as e:
        problems.append(SpecProblem(rel, None, "(syntax)", f"YAML error: {e}", "valid YAML"))
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
    got = f" (got {given!r})" if not isinstance(given, dict | list) else ""
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


def validate_model(src: SourceFile, model: type[BaseModel], problems: list[SpecProblem], data: Any = None,
                   prefix: Path_ = ()):
    try:
        return model.model_validate(src.data if data is None else data)
    except ValidationError as e:
        for err in e.errors():
            loc = prefix + tuple(err["loc"])
            what, expected = _explain(err)
            problems.append(src.problem(loc, what, expected))
        return None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_spec(root: Path | str) -> Spec:
    """Load and cross-check the spec directory at `root`; raise SpecError listing every problem."""
    root = Path(root)
    problems: list[SpecProblem] = []
    if not root.is_dir():
        raise SpecError(SpecProblem(str(root), None, "(directory)", "spec directory not found",
                                    "a directory with inventory.yaml (--spec DIR or PROVISIONER_SPEC)"))
    inv_src = parse_yaml(root, "inventory.yaml", problems)
    boot_src = parse_yaml(root, "boot_profiles.yaml", problems)
    inventory = validate_model(inv_src, Inventory, problems) if inv_src else None
    boot = validate_model(boot_src, BootProfiles, problems) if boot_src else None

    policy, policy_src = Policy(), None
    if (root / "policy.yaml").exists():
        policy_src = parse_yaml(root, "policy.yaml", problems)
        policy = (validate_model(policy_src, Policy, problems) if policy_src else None) or Policy()

    deny, deny_src = DenyList(), None
    if (root / "deny-list.yaml").exists():
        deny_src = parse_yaml(root, "deny-list.yaml", problems)
        deny = (validate_model(deny_src, DenyList, problems) if deny_src else None) or DenyList()

    manifests: dict[str, FirmwareManifest] = {}
    manifest_src: dict[str, SourceFile] = {}
    mdir = root / "firmware_manifests"
    for f in sorted(mdir.glob("*.yaml")) if mdir.is_dir() else []:
        rel = f"firmware_manifests/{f.name}"
        src = parse_yaml(root, rel, problems)
        m = validate_model(src, FirmwareManifest, problems) if src else None
        if m is None:
            continue
        if m.model in manifests:
            problems.append(src.problem(("model",), f"model {m.model!r} already has a manifest in "
                                        f"{manifest_src[m.model].rel}", "one manifest per hardware model"))
            continue
        if f.stem != m.model:
            problems.append(src.problem(("model",), f"file name {f.name!r} does not match model {m.model!r}",
                                        f"the file to be named {m.model}.yaml"))
        manifests[m.model], manifest_src[m.model] = m, src

    templates: dict[str, str] = {}
    tdir = root / "templates"
    for f in sorted(tdir.rglob("*")) if tdir.is_dir() else []:
        if f.is_file():
            templates[f.relative_to(tdir).as_posix()] = sha256_file(f)

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
        f = (self.root / ref.file).resolve()
        if not f.is_relative_to(self.root.resolve()):
            self.problems.append(src.problem(path + ("file",), f"{ref.file!r} points outside the spec directory",
                                             "a path inside the spec directory"))
            return
        if not f.is_file():
            self.problems.append(src.problem(path + ("file",), f"artifact {ref.file!r} does not exist",
                                             "an existing file, relative to the spec directory"))
            return
        if f not in self._digests:
            self._digests[f] = (sha256_file(f), f.stat().st_size)
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
