"""Profiles: partial params files layered over params.yaml (tiny for CI, GPU fleets, ...).

DVC reads only params.yaml, so a profile is applied by rewriting it; git shows what changed.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

from millennial.atomic import write_text
from millennial.params import load_params


def overlay(params: dict[str, Any], profile: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge `profile` into `params`: mappings merge key by key, anything else replaces."""
    merged = dict(params)
    for key, value in profile.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = overlay(merged[key], value)
        else:
            merged[key] = value
    return merged


def apply_profile(profile_path: Path, params_path: Path = Path("params.yaml")) -> dict[str, Any]:
    merged = overlay(load_params(params_path), load_params(profile_path))
    write_text(params_path, yaml.safe_dump(merged, sort_keys=False))
    return merged


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("profile", help="layer a profile (e.g. profiles/tiny.yaml) "
                                 "over params.yaml")
    parser.add_argument("profile", type=Path)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.set_defaults(func=_apply)


def _apply(args: argparse.Namespace) -> int:
    apply_profile(args.profile, args.params)
    print(f"{args.params}: {args.profile} applied")
    return 0
