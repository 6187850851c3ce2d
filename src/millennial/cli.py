"""The `millennial` command: one sub-command per user-facing task."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from millennial.cost.cli import register as register_cost_commands
from millennial.profiles import register as register_profile
from millennial.study import register as register_study


def _prepare_base(args: argparse.Namespace) -> int:
    # torch + transformers take ~10 s to import: only pay for them when the command runs.
    from millennial.base import prepare_base_from_params

    prepare_base_from_params(args.params, args.out)
    return 0


def register_prepare_base(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "prepare-base", help="fetch the base model into models/base (DVC stage prepare_base)"
    )
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--out", type=Path, default=Path("models/base"))
    parser.set_defaults(func=_prepare_base)


def _lineage(args: argparse.Namespace) -> int:
    import json
    import sys

    from millennial.lineage import LineageError, lineage, render_markdown

    try:
        info = lineage(args.artifact, args.repo)
    except LineageError as err:
        print(f"millennial lineage: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(info, indent=2) if args.json else render_markdown(info), end="")
    return 0


def register_lineage(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "lineage", help="how a DVC output was made: stages, md5s, params, validation, cost, commit"
    )
    parser.add_argument("artifact", help="a DVC output path, e.g. models/phase1")
    parser.add_argument("--repo", type=Path, default=Path("."), help="the DVC repository root")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=_lineage)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="millennial", description="TRM injection pipeline: plan, build and audit runs."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    # Each registration adds one sub-parser and sets `func`; heavy imports happen inside `func`.
    register_prepare_base(commands)
    register_cost_commands(commands)
    register_lineage(commands)
    register_profile(commands)
    register_study(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
