"""Every module a stage imports is one of that stage's deps in dvc.yaml.

Otherwise editing it leaves `dvc status` clean and the committed figures stale. The closure is
read from the source (imports anywhere in a module; a name taken from a lazy package counts the
module its `__init__`'s `_EXPORTS` maps it to), so it needs no import of torch.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
ROOTS = {"millennial": ROOT / "src" / "millennial", "stages": ROOT / "stages"}
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def module_file(dotted: str) -> Path | None:
    top, *rest = dotted.split(".")
    if top not in ROOTS:
        return None
    path = ROOTS[top].joinpath(*rest)
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return None


def lazy_exports(package: str) -> dict[str, str]:
    """A package `__init__`'s `_EXPORTS` (name -> module it is imported from on first use)."""
    init = module_file(package)
    if init is None or init.name != "__init__.py":
        return {}
    for node in ast.parse(init.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "_EXPORTS" for t in node.targets):
            return ast.literal_eval(node.value)
    return {}


def imported_names(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            lazy = lazy_exports(node.module)
            names.update(lazy.get(alias.name, f"{node.module}.{alias.name}")
                         for alias in node.names)
    return names


def closure(entry: Path) -> set[Path]:
    seen: set[Path] = set()
    todo = [entry]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in imported_names(path):
            parts = name.split(".")
            for end in range(1, len(parts) + 1):  # a module imports its packages' __init__ too
                found = module_file(".".join(parts[:end]))
                if found is not None and found not in seen:
                    todo.append(found)
    return seen


def covered(path: Path, deps: list[str]) -> bool:
    relative = path.relative_to(ROOT)
    return any(relative == Path(dep) or Path(dep) in relative.parents for dep in deps)


def test_the_closure_finds_imports_of_every_kind() -> None:
    found = {p.relative_to(ROOT).as_posix() for p in closure(ROOT / "stages/train_phase1.py")}
    assert {"stages/_common.py", "src/millennial/hybrid/injection.py",  # lazy __init__ names
            "src/millennial/params.py", "src/millennial/__init__.py"} <= found


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_imported_module_is_a_dep_of_the_stage(stage: str) -> None:
    spec = STAGES[stage]
    entry = re.search(r"python -m (stages\.\w+)", spec["cmd"])
    assert entry, f"dvc.yaml: stage {stage}: cmd is not `python -m stages.<name>`"
    deps = [str(dep) for dep in spec.get("deps", [])]
    missing = sorted(p.relative_to(ROOT).as_posix()
                     for p in closure(module_file(entry.group(1))) if not covered(p, deps))
    assert not missing, f"dvc.yaml: stage {stage} imports modules it does not list: {missing}"


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_no_code_dep_is_stale(stage: str) -> None:
    """A listed module the stage no longer imports reruns it for nothing when edited."""
    spec = STAGES[stage]
    entry = re.search(r"python -m (stages\.\w+)", spec["cmd"])
    imported = {p.relative_to(ROOT) for p in closure(module_file(entry.group(1)))}
    code = [Path(str(dep)) for dep in spec.get("deps", [])
            if str(dep).startswith(("src/", "stages/"))]
    stale = [dep.as_posix() for dep in code
             if not any(path == dep or dep in path.parents for path in imported)]
    assert not stale, f"dvc.yaml: stage {stage} lists modules it does not import: {stale}"


def test_every_untracked_metric_persists_through_a_failed_run() -> None:
    """`cache: false` metrics cannot be checked out again: DVC must not delete them first."""
    loose = [name for spec in STAGES.values() for entry in spec.get("metrics", [])
             for name, options in entry.items()
             if options.get("cache") is False and options.get("persist") is not True]
    assert not loose, f"dvc.yaml: cache: false metrics without persist: true: {loose}"


def test_local_data_sources_are_a_dep_of_curate() -> None:
    assert "data/sources" in [str(dep).split()[0] for dep in STAGES["curate"]["deps"]]
    assert (ROOT / "data/sources/README.md").is_file()  # the folder exists in every clone
