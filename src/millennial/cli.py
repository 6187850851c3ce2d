"""The `millennial` command: one sub-command per user-facing task."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from millennial.cost.cli import register as register_cost_commands


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="millennial", description="TRM injection pipeline: plan, build and audit runs."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    # Each registration adds one sub-parser and sets `func`; heavy imports happen inside `func`.
    register_prepare_base(commands)
    register_cost_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
