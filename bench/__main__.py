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


def main(only: list[str] | None = None) -> int:
    """Run every benchmark (or those named in `only`, replacing just their sections of an
    existing RESULTS.md) and write the results."""
    results = BENCH_DIR / "RESULTS.md"
    kept: list[str] = []  # with `only`: the other sections as they are ("## <title>" each)
    sections = [machine_header()]
    if only and results.exists():
        previous = results.read_text(encoding="utf-8").split("\n\n## ")
        sections[0] = previous[0].split("\n\nRerun on ")[0]  # the machine the rest ran on
        kept = ["## " + text for text in previous[1:]]
    failed = []
    modules = sorted(pkgutil.iter_modules([str(BENCH_DIR)]), key=lambda m: m.name)
    unknown = sorted(set(only or ()) - {m.name for m in modules})
    if unknown:
        print(f"bench: no benchmark named {', '.join(unknown)}", file=sys.stderr)
        return 2
    for module_info in modules:
        if module_info.name.startswith("_"):
            continue
        if only and module_info.name not in only:
            continue
        print(f"bench: running {module_info.name}", file=sys.stderr, flush=True)
        module = importlib.import_module(f"bench.{module_info.name}")
        try:
            sections.append(module.run())
        except RuntimeError as err:  # a failed measurement is reported, never hidden
            failed.append(module_info.name)
            sections.append(f"## {module_info.name}\n\nMEASUREMENT FAILED: {err}")
    if only:  # the fresh sections replace the ones with the same title, the rest stay
        fresh = {section.split("\n", 1)[0]: section for section in sections[1:]}
        merged = [fresh.pop(text.split("\n", 1)[0], text.rstrip("\n")) for text in kept]
        today = datetime.date.today().isoformat()
        header = (f"{sections[0]}\n\nRerun on {today} ({platform.machine()}, "
                  f"{os.cpu_count()} cores, torch {torch.__version__}): {', '.join(only)}.")
        sections = [header, *merged, *fresh.values()]
    write_text(results, "\n\n".join(sections) + "\n")
    print(f"bench: wrote {BENCH_DIR / 'RESULTS.md'}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:] or None))
