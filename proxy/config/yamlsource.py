"""YAML loading that remembers where every value came from, for ``file:line`` errors.

``load_yaml(path)`` returns a :class:`Node` tree: plain values plus the line of
each mapping key and value. Validators read it through :class:`Fields`, which
collects every problem as a :class:`ConfigError` instead of stopping at the
first, so ``tersegate check`` can print them all.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

__all__ = ["ConfigError", "ConfigErrors", "Fields", "Node", "default_of", "load_yaml"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ConfigError:
    file: str
    line: int
    message: str
    warning: bool = False

    def __str__(self) -> str:
        kind = "warning: " if self.warning else ""
        return f"{self.file}:{self.line}: {kind}{self.message}"


class ConfigErrors(Exception):
    """One or more configuration errors; ``str()`` gives one ``file:line: message`` per line."""

    def __init__(self, errors: list[ConfigError]) -> None:
        super().__init__("\n".join(str(e) for e in errors))
        self.errors = errors


@dataclass(slots=True)
class Node:
    """A YAML value with its source position. ``value`` holds plain Python for
    scalars, ``dict[str, Node]`` for mappings and ``list[Node]`` for sequences."""

    value: Any
    file: str
    line: int
    key_lines: dict[str, int] = field(default_factory=dict)

    def plain(self) -> Any:
        """The value with positions stripped."""
        if isinstance(self.value, dict):
            return {k: v.plain() for k, v in self.value.items()}
        if isinstance(self.value, list):
            return [v.plain() for v in self.value]
        return self.value

    def error(self, message: str, *, key: str | None = None) -> ConfigError:
        line = self.key_lines.get(key, self.line) if key is not None else self.line
        return ConfigError(self.file, line, message)


def _convert(node: yaml.Node, file: str, loader: yaml.SafeLoader, errors: list[ConfigError]) -> Node:
    line = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        values: dict[str, Node] = {}
        key_lines: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            key_line = key_node.start_mark.line + 1
            if not isinstance(key, str):
                errors.append(ConfigError(file, key_line, f"keys must be strings, got {key!r}"))
                key = str(key)
            if key in values:
                errors.append(ConfigError(file, key_line, f"duplicate key {key!r}"))
            values[key] = _convert(value_node, file, loader, errors)
            key_lines[key] = key_line
        return Node(values, file, line, key_lines)
    if isinstance(node, yaml.SequenceNode):
        return Node([_convert(item, file, loader, errors) for item in node.value], file, line)
    return Node(loader.construct_object(node, deep=True), file, line)


def load_yaml(path: Path, *, display: str | None = None) -> Node:
    """Parse ``path``; raise :class:`ConfigErrors` with positions on any problem."""
    file = display or str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigErrors([ConfigError(file, 0, "file not found")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigErrors([ConfigError(file, 0, f"cannot read: {exc}")]) from None
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 0
        raise ConfigErrors([ConfigError(file, line, f"invalid YAML: {exc.problem or exc}")]) from None
    finally:
        loader.dispose()
    if root is None:
        return Node({}, file, 1)
    errors: list[ConfigError] = []
    try:
        result = _convert(root, file, loader, errors)
    except yaml.YAMLError as exc:
        raise ConfigErrors([ConfigError(file, root.start_mark.line + 1, f"invalid YAML: {exc}")]) from None
    if errors:
        raise ConfigErrors(errors)
    return result


_TYPE_NAMES: dict[type, str] = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true or false",
    list: "a list",
    dict: "a mapping",
}


def default_of(cls: type[Any], key: str) -> Any:
    """The default of field ``key`` of the dataclass ``cls``: parsers take defaults from the model."""
    for found in dataclasses.fields(cls):
        if found.name != key:
            continue
        if found.default is not dataclasses.MISSING:
            return found.default
        if found.default_factory is not dataclasses.MISSING:
            return found.default_factory()
        break
    raise KeyError(f"{cls.__name__}.{key} has no default")


def _type_name(types: tuple[type, ...]) -> str:
    return " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in types)


class Fields:
    """Reads a mapping node's keys with type checks, collecting errors.

    ``fields.get("port", int, 8080)`` returns the value or the default
    (``fields.get_field(ListenConfig, "port", int)``: the model's default);
    ``fields.finish()`` reports keys nobody asked for as unknown.
    """

    def __init__(self, node: Node, errors: list[ConfigError], *, what: str) -> None:
        self.node = node
        self.errors = errors
        self.what = what
        self._seen: set[str] = set()
        if not isinstance(node.value, dict):
            errors.append(node.error(f"{what} must be a mapping"))
            self._map: dict[str, Node] = {}
        else:
            self._map = node.value

    def __contains__(self, key: str) -> bool:
        return key in self._map

    def keys(self) -> Iterator[str]:
        return iter(self._map)

    def node_of(self, key: str) -> Node | None:
        self._seen.add(key)
        return self._map.get(key)

    def get(self, key: str, types: type | tuple[type, ...], default: T, *, required: bool = False) -> Any:
        self._seen.add(key)
        allowed = types if isinstance(types, tuple) else (types,)
        child = self._map.get(key)
        if child is None or child.value is None:
            if required:
                self.errors.append(self.node.error(f"{self.what}: missing required key {key!r}"))
            return default
        value = child.value
        if float in allowed and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        ok = isinstance(value, allowed) and not (isinstance(value, bool) and bool not in allowed)
        if isinstance(value, (dict, list)) and dict not in allowed and list not in allowed:
            ok = False
        if not ok:
            shown = (
                "a mapping"
                if isinstance(value, dict)
                else "a list"
                if isinstance(value, list)
                else repr(value)
            )
            self.errors.append(child.error(f"{self.what}.{key} must be {_type_name(allowed)}, got {shown}"))
            return default
        return child.plain() if isinstance(value, (dict, list)) else value

    def get_field(self, cls: type[Any], key: str, types: type | tuple[type, ...]) -> Any:
        """``get(key, types, default)`` with the default of the dataclass field ``cls.key``."""
        return self.get(key, types, default_of(cls, key))

    def check(self, key: str, ok: Callable[[Any], bool], message: str) -> None:
        """Record ``message`` at ``key`` unless ``ok(value)``; missing keys pass."""
        child = self._map.get(key)
        if child is not None and child.value is not None and not ok(child.plain()):
            self.errors.append(child.error(f"{self.what}.{key}: {message}"))

    def finish(self, *, extra_allowed: set[str] | None = None) -> None:
        allowed = self._seen | (extra_allowed or set())
        for key in self._map:
            if key not in allowed:
                known = ", ".join(sorted(allowed))
                self.errors.append(
                    ConfigError(
                        self.node.file,
                        self.node.key_lines.get(key, self.node.line),
                        f"{self.what}: unknown key {key!r} (known: {known})",
                    )
                )
