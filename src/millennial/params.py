"""Reading `params.yaml`: every lookup that fails names the file and the key."""

from __future__ import annotations

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
