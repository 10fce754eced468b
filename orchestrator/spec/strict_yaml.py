"""YAML for study files: PyYAML's safe loader that refuses a key given twice in one mapping.

PyYAML keeps the last of two equal keys without a word (YAML 1.2 says keys must be unique), so a study
that sets `epochs` twice would silently run with the second value. A merge key (`<<: *defaults`) may
still be overridden by an explicit key: that is what merging means, not a repeat.
"""

from __future__ import annotations

from typing import Any

import yaml

from workloads.config import ConfigError

_MERGE_TAG = "tag:yaml.org,2002:merge"


class UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader (no arbitrary objects) whose mappings refuse duplicate keys."""

    source = "<string>"

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: SafeLoader reports it itself
                continue
            line = key_node.start_mark.line + 1
            if first is not None:
                raise ConfigError(
                    f"{self.source}: line {line}: key {key!r} is given twice in one mapping (first at "
                    f"line {first}); YAML would silently keep the last one, give it once"
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def parse(text: str, source: str = "<string>") -> Any:
    """The single YAML document in `text` (yaml.YAMLError on a syntax error; ConfigError naming
    `source`, the key and its line on a duplicate key)."""
    loader = UniqueKeyLoader(text)
    loader.source = source
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()
