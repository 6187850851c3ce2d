"""`make bench`: run every benchmark module in bench/ and write bench/RESULTS.md."""

from __future__ import annotations

import datetime
import importlib
import os
import pkgutil
import platform
import sys
from pathlib import Path

import torch

from millennial.atomic import write_text

BENCH_DIR = Path(__file__).parent


def machine_header() -> str:
    return "\n".join([
        "# Benchmark results",
        "",
        f"- date: {datetime.date.today().isoformat()}",
        f"- machine: {platform.machine()}, {os.cpu_count()} cores, {platform.system()}",
        f"- torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"CUDA: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'not available'}",
        f"- python {platform.python_version()}",
        "",
        "Each figure is a ratio measured side by side in one run; absolute times on shared "
        "machines mean little.",
    ])


def main() -> int:
    sections = [machine_header()]
    failed = []
    for module_info in sorted(pkgutil.iter_modules([str(BENCH_DIR)]), key=lambda m: m.name):
        if module_info.name.startswith("_"):
            continue
        print(f"bench: running {module_info.name}", file=sys.stderr, flush=True)
        module = importlib.import_module(f"bench.{module_info.name}")
        try:
            sections.append(module.run())
        except RuntimeError as err:  # a failed measurement is reported, never hidden
            failed.append(module_info.name)
            sections.append(f"## {module_info.name}\n\nMEASUREMENT FAILED: {err}")
    write_text(BENCH_DIR / "RESULTS.md", "\n\n".join(sections) + "\n")
    print(f"bench: wrote {BENCH_DIR / 'RESULTS.md'}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
