"""DVC stage `seed_audit`: the design document's cost claims recomputed -> reports/seed_audit.md."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from millennial.cost.audit import write_seed_audit
from millennial.cost.meter import Meter
from millennial.errors import USER_ERRORS

STAGE = "seed_audit"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stages.seed_audit", description=__doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--out", type=Path, default=Path("reports/seed_audit.md"))
    args = parser.parse_args(argv)
    try:
        with Meter(STAGE, params_path=args.params):
            write_seed_audit(args.out)
    except USER_ERRORS as err:  # a user's fix, not a bug: no traceback
        print(f"{STAGE}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
