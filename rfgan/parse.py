"""Reading the JSON and YAML files that people write or edit (configs, search spaces, metadata.json, state.json),
and writing JSON that every reader takes.

What the standard parsers let pass quietly is refused here, with one line naming the file: a key given twice (both
parsers keep the last one without a word), a YAML alias (`*name`: a file of a few hundred bytes can expand to
gigabytes as rfgan walks it), a file that is not UTF-8. JSON is written without bare NaN or Infinity, which strict
JSON readers (and most other languages') refuse.
"""

from __future__ import annotations

import json
import math
from typing import Any

import yaml

from rfgan.errors import ConfigError


def decode(data: bytes, where: str, error: type[Exception] = ConfigError) -> str:
    """UTF-8 text (a byte-order mark allowed), or `error` naming the file and how to save it."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        utf16 = " (it looks like UTF-16)" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
        raise error(
            f"{where}: cannot read it as UTF-8 text{utf16} ({e.reason} at byte {e.start}); save it as UTF-8."
        ) from e


def _unique_keys(where: str, error: type[Exception]):
    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in items:
            if key in out:
                raise error(f"{where}: the key {key!r} is given twice (which one is meant?); keep one of them.")
            out[key] = value
        return out

    return pairs


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def loads_json(text: str, where: str, error: type[Exception] = ConfigError) -> Any:
    """Strict JSON: duplicate keys, NaN and Infinity refused (Python's json reads all three without a word)."""
    try:
        return json.loads(text, object_pairs_hook=_unique_keys(where, error), parse_constant=_no_constant)
    except ValueError as e:  # JSONDecodeError, or a NaN/Infinity constant
        if isinstance(e, error):
            raise
        raise error(f"{where}: cannot parse it as JSON ({e}).") from e


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing aliases and duplicate keys."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, f"an alias (*{event.anchor}) is not allowed: write the value out", event.start_mark
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} is given twice (which one is meant?); keep one", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def loads_yaml(text: str, where: str, error: type[Exception] = ConfigError) -> Any:
    """YAML with the safe loader, without aliases or duplicate keys; errors are one line with the place."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e)
        raise error(f"{where}: cannot parse it as YAML{at}: {problem}.") from e


def loads(data: bytes, where: str, error: type[Exception] = ConfigError) -> Any:
    """A .yaml/.yml file's bytes as YAML, any other as JSON."""
    text = decode(data, where, error)
    if str(where).endswith((".yaml", ".yml")):
        return loads_yaml(text, where, error)
    return loads_json(text, where, error)


def finite_or_null(value: Any) -> Any:
    """`value` with every NaN or infinite float in it replaced by None (JSON null: "undefined")."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(v) for v in value]
    return value


def dumps(value: Any, indent: int = 1) -> str:
    """JSON text of `value` with non-finite floats as null, ending in a newline."""
    return json.dumps(finite_or_null(value), indent=indent, allow_nan=False) + "\n"
