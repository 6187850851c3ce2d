"""DVC stage `seed_audit`: the design document's cost claims recomputed -> reports/seed_audit.md."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from millennial.cost.audit import write_seed_audit
from millennial.cost.meter import Meter
from millennial.errors import run_reporting

STAGE = "seed_audit"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stages.seed_audit", description=__doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--out", type=Path, default=Path("reports/seed_audit.md"))
    args = parser.parse_args(argv)

    def work() -> int:
        with Meter(STAGE, params_path=args.params,
                   unmodelled="arithmetic on the seed document"):
            write_seed_audit(args.out)
        return 0

    return run_reporting(STAGE, work)


if __name__ == "__main__":
    raise SystemExit(main())
