"""Reading `params.yaml`: every lookup that fails names the file and the key.

`Options` is the one way sections are validated: strict types, ranges, unknown keys named.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from millennial.errors import UserError


class ParamsError(UserError):
    """A params file is missing, malformed, or lacks a key a stage needs."""


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    """Load a params file; a missing file or broken YAML names the file (and line)."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ParamsError(f"{path}:{where} invalid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def section(params: dict[str, Any], key: str, source: str | Path = "params.yaml") -> dict[str, Any]:
    """Return the mapping at dotted `key` (e.g. "base.tiny_random"), or raise naming it."""
    node: Any = params
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ParamsError(f"{source}: missing key '{key}'")
        node = node[part]
    if not isinstance(node, dict):
        raise ParamsError(f"{source}: '{key}' must be a mapping, got {type(node).__name__}")
    return node


_MISSING: Any = object()


class Options:
    """A params mapping that names its file and full key path (`curate.sources[2].kind`) in
    every error, so a typo in params.yaml is reported where it is, not as a KeyError."""

    def __init__(self, raw: Any, key: str, where: str | Path = "params.yaml") -> None:
        if not isinstance(raw, Mapping):
            raise ParamsError(f"{where}: '{key}' must be a mapping, got {type(raw).__name__}")
        self.raw, self.key, self.where = raw, key, str(where)

    def error(self, name: str, message: str) -> ParamsError:
        return ParamsError(f"{self.where}: '{self.key}.{name}' {message}")

    def only(self, *allowed: str) -> None:
        """Reject unknown keys: a misspelt option must not be silently ignored."""
        unknown = sorted(set(self.raw) - set(allowed))
        if unknown:
            raise ParamsError(f"{self.where}: '{self.key}' has unknown key(s) "
                              f"{', '.join(map(str, unknown))} (allowed: {', '.join(allowed)})")

    def get(self, name: str, default: Any = _MISSING) -> Any:
        if name in self.raw and self.raw[name] is not None:
            return self.raw[name]
        if default is _MISSING:
            raise ParamsError(f"{self.where}: missing key '{self.key}.{name}'")
        return default

    def child(self, name: str) -> Options:
        return Options(self.get(name), f"{self.key}.{name}", self.where)

    def text(self, name: str, default: Any = _MISSING) -> str:
        value = self.get(name, default)
        if not isinstance(value, str) or not value:
            raise self.error(name, f"must be a non-empty string, got {value!r}")
        return value

    def integer(self, name: str, default: Any = _MISSING, low: int | None = None) -> int:
        value = self.get(name, default)
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.error(name, f"must be an integer, got {value!r}")
        if low is not None and value < low:
            raise self.error(name, f"must be >= {low}, got {value}")
        return value

    def number(self, name: str, default: Any = _MISSING, low: float = 0.0,
               high: float = 1.0) -> float:
        value = self.get(name, default)
        if not isinstance(value, int | float) or isinstance(value, bool) or not (
            math.isfinite(value) and low <= value <= high
        ):
            raise self.error(name, f"must be a finite number in [{low}, {high}], got {value!r}")
        return float(value)

    def positive(self, name: str, default: Any = _MISSING) -> float:
        """A finite number > 0 (learning rates, multipliers): NaN and inf are refused."""
        value = self.get(name, default)
        if not isinstance(value, int | float) or isinstance(value, bool) or not (
            math.isfinite(value) and value > 0
        ):
            raise self.error(name, f"must be a finite number > 0, got {value!r}")
        return float(value)

    def flag(self, name: str, default: Any = _MISSING) -> bool:
        value = self.get(name, default)
        if not isinstance(value, bool):
            raise self.error(name, f"must be true or false, got {value!r}")
        return value

    def choice(self, name: str, choices: tuple[str, ...], default: Any = _MISSING) -> str:
        value = self.get(name, default)
        if value not in choices:
            raise self.error(name, f"must be one of {', '.join(choices)}, got {value!r}")
        return str(value)

    def int_range(self, name: str, default: Any = _MISSING) -> tuple[int, int]:
        """An inclusive [low, high] pair of integers."""
        value = self.get(name, default)
        if (
            not isinstance(value, list | tuple) or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
            or value[0] > value[1]
        ):
            raise self.error(name, f"must be [low, high] integers with low <= high, got {value!r}")
        return int(value[0]), int(value[1])

    def strings(self, name: str) -> tuple[str, ...]:
        """One string or a non-empty list of strings."""
        value = self.get(name)
        values = [value] if isinstance(value, str) else value
        if not isinstance(values, list) or not values or not all(
            isinstance(v, str) and v for v in values
        ):
            raise self.error(name, f"must be a string or a list of strings, got {value!r}")
        return tuple(values)
