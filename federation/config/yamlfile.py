"""YAML loading that keeps line numbers and refuses duplicate keys.

PyYAML silently keeps the last of two equal keys; in a fleet file that hides a duplicated DC, so
the loader refuses them. Every mapping key's line is recorded under its key path
(`dcs.dub1.region`), so that a validation error can say where the problem is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from federation.errors import ConfigError

KeyLines = dict[str, int]


class _LineLoader(yaml.SafeLoader):
    pass


def _key_path(parts: list[str]) -> str:
    return ".".join(parts)


def _walk(
    loader: _LineLoader,
    node: yaml.Node,
    path: list[str],
    lines: KeyLines,
    file: str,
    errors: list[ConfigError],
) -> Any:
    """Build plain Python data from a composed node tree, recording key lines."""
    if isinstance(node, yaml.MappingNode):
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            key_str = str(key)
            child = [*path, key_str]
            if key in result:
                errors.append(
                    ConfigError(
                        file,
                        _key_path(child),
                        f"duplicate key {key_str!r} (first at line {lines[_key_path(child)]})",
                        key_node.start_mark.line + 1,
                    )
                )
                continue
            lines[_key_path(child)] = key_node.start_mark.line + 1
            result[key] = _walk(loader, value_node, child, lines, file, errors)
        return result
    if isinstance(node, yaml.SequenceNode):
        items = []
        for index, item in enumerate(node.value):
            child = [*path, str(index)]
            lines[_key_path(child)] = item.start_mark.line + 1
            items.append(_walk(loader, item, child, lines, file, errors))
        return items
    return loader.construct_object(node, deep=True)


def load_yaml(path: Path, display: str | None = None) -> tuple[Any, KeyLines]:
    """Load one YAML file; return its data and the line of every key path.

    Raises ConfigError naming the file and line for a syntax error or a duplicate key.
    """
    name = display or str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(name, "", f"cannot read: {exc.strerror}") from None
    try:
        node = yaml.compose(text, Loader=_LineLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        column = f", column {mark.column + 1}" if mark is not None else ""
        problem = exc.problem or exc.context or "invalid YAML"
        raise ConfigError(name, "", f"YAML syntax error{column}: {problem}", line) from None
    if node is None:
        return {}, {}
    lines: KeyLines = {}
    errors: list[ConfigError] = []
    # Scalars are built by a SafeLoader so that ints, floats, booleans and dates resolve exactly
    # as yaml.safe_load resolves them.
    data = _walk(_LineLoader(""), node, [], lines, name, errors)
    if errors:
        from federation.errors import ConfigProblems

        raise ConfigProblems(errors)
    return data, lines
