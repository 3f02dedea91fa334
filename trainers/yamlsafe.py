"""YAML for user files: PyYAML's safe loader, without duplicate keys and with few aliases.

`yaml.safe_load` keeps the last of two equal keys (a typo silently wins) and expands aliases without
bound: nine nested anchors of ten references each ("billion laughs") build 10**9 list items from a
few hundred bytes. Configurations need neither, so both are refused with one line.
"""

from __future__ import annotations

import yaml

MAX_ALIASES = 100
MAX_ITEMS = 1_000_000  # values after expanding aliases (chained aliases double at every level)


class _Loader(yaml.SafeLoader):
    """SafeLoader that counts alias references and refuses duplicate mapping keys."""

    def __init__(self, stream):
        super().__init__(stream)
        self.aliases = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_ALIASES:
                mark = self.peek_event().start_mark
                raise yaml.constructor.ConstructorError(
                    None, None, f"more than {MAX_ALIASES} aliases (*name); write the values out", mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) or key is None:
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r}", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load(text: str):
    """Parse one YAML document; raises yaml.YAMLError for bad syntax, duplicate keys or too many aliases."""
    obj = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    if _expanded_size(obj, {}) > MAX_ITEMS:
        raise yaml.YAMLError(f"the document expands to more than {MAX_ITEMS:,} values through its aliases")
    return obj


def _expanded_size(obj, memo: dict) -> int:
    """Values in `obj` counted as if every shared (aliased) list or mapping were copied out."""
    if not isinstance(obj, (list, dict)):
        return 1
    if id(obj) not in memo:
        memo[id(obj)] = 0  # a self-referencing alias counts once
        children = obj.values() if isinstance(obj, dict) else obj
        memo[id(obj)] = 1 + sum(_expanded_size(child, memo) for child in children)
    return memo[id(obj)]
