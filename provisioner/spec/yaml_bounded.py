"""Parsing YAML within limits: nesting depth, alias expansion, integer size.

PyYAML's safe loader still lets a small file cost without bound: 272 bytes of nested anchors
("billion laughs", 7 levels of 9 aliases) expand to 5 million nodes for whoever walks the data;
`[[[[...` a few thousand deep overflows its recursive composer; a 5,000-digit integer raises
ValueError from int() (Python's str-to-int digit limit). Here each of those is a `LimitExceeded`
with the line it was found on, raised before anything walks the expanded data.

Aliases are allowed (anchors for repeated BMC settings are a fair use), but the nodes they add
when expanded are counted against `SpecLimits.max_alias_nodes`, and an alias inside its own
anchor (a recursive structure) is refused.
"""

from __future__ import annotations

import yaml

from provisioner.spec.files import SpecLimits


class LimitExceeded(Exception):
    def __init__(self, line: int | None, field: str, message: str, expected: str):
        super().__init__(message)
        self.line, self.field, self.message, self.expected = line, field, message, expected


class _BoundedLoader(yaml.SafeLoader):
    def __init__(self, text: str, limits: SpecLimits):
        super().__init__(text)
        self.limits, self._depth = limits, 0

    def compose_node(self, parent, index):
        # PyYAML composes recursively (one Python frame pair per level): stop before the stack does.
        if self.check_event(yaml.AliasEvent):
            return super().compose_node(parent, index)
        self._depth += 1
        try:
            if self._depth > self.limits.max_depth:
                mark = self.peek_event().start_mark
                raise LimitExceeded(mark.line + 1, "(syntax)", f"nested deeper than {self.limits.max_depth} levels",
                                    "a flatter structure")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_yaml_int(self, node):
        digits = sum(c.isdigit() for c in node.value)
        if digits > self.limits.max_int_digits:
            raise LimitExceeded(node.start_mark.line + 1, "(value)", f"an integer of {digits} digits",
                                f"at most {self.limits.max_int_digits} digits (quote it if it is a name)")
        return super().construct_yaml_int(node)


_BoundedLoader.add_constructor("tag:yaml.org,2002:int", _BoundedLoader.construct_yaml_int)


def _check_expansion(top: yaml.Node, limits: SpecLimits) -> None:
    """Count the nodes and depth the document has once aliases are expanded; refuse past the limits.

    Memoised per node, so the cost is that of the written document, not of its expansion. An alias
    always names an anchor written earlier; if that anchor is still open on the walk, it is a cycle.
    """
    size: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded nodes, expanded depth)
    open_: set[int] = set()

    def walk(node: yaml.Node) -> tuple[int, int]:
        key = id(node)
        if key in size:
            return size[key]
        if key in open_:
            raise LimitExceeded(node.start_mark.line + 1, "(alias)", "an alias inside its own anchor (a recursive "
                                "structure)", "data without self-reference")
        open_.add(key)
        children = ([c for kv in node.value for c in kv] if isinstance(node, yaml.MappingNode)
                    else node.value if isinstance(node, yaml.SequenceNode) else [])
        n, depth = 1, 0
        for child in children:
            cn, cd = walk(child)
            n, depth = n + cn, max(depth, cd)
        open_.discard(key)
        size[key] = (n, depth + 1)
        if depth + 1 > limits.max_depth:
            raise LimitExceeded(node.start_mark.line + 1, "(alias)", f"aliases expand to more than "
                                f"{limits.max_depth} levels of nesting", "fewer aliases inside aliases")
        return size[key]

    expanded, _ = walk(top)
    added = expanded - len(size)
    if added > limits.max_alias_nodes:
        raise LimitExceeded(None, "(alias)", f"aliases expand to {expanded:,} nodes ({added:,} more than written)",
                            f"at most {limits.max_alias_nodes:,} added by aliases; write the data out instead")


def compose_and_construct(text: str, limits: SpecLimits) -> tuple[yaml.Node | None, object]:
    """(node tree for line numbers, constructed data) of one YAML document, within `limits`.

    Raises LimitExceeded, or yaml.YAMLError for malformed YAML.
    """
    loader = _BoundedLoader(text, limits)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, None
        _check_expansion(node, limits)
        return node, loader.construct_document(node)
    finally:
        loader.dispose()
