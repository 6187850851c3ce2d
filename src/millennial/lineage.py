"""`millennial lineage <artifact>`: how a DVC output was made, back to the raw sources.

Everything comes from records the pipeline already keeps, so there is no second bookkeeping:
`dvc.lock` (each stage's command, the md5 of every dep and out, the params values it ran with),
`metrics/validation.json` (the data gate's verdict), `metrics/cost/<stage>.json` (what each stage
cost, from the meter) and git (which commit the workspace is at). Only the root `dvc.lock` is
read: stages defined in nested dvc.yaml files are not followed.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from millennial.cost.record import CostRecord
from millennial.errors import UserError

LOCK_FILE = "dvc.lock"
VALIDATION_METRICS = "metrics/validation.json"
COST_DIR = "metrics/cost"
BASE_MODEL_DIR = "models/base"
CODE_DIRS = frozenset({"src", "stages", "scripts", "flows", "configs", "bench"})
CODE_SUFFIXES = frozenset({".py", ".sh", ".toml", ".cfg", ".ini", ".yaml", ".yml"})
COST_KEYS = ("status", "usd", "wall_seconds", "energy_kwh", "energy_method", "co2e_kg",
             "gpu_hours", "device_kind", "device_count", "started_at")


class LineageError(UserError):
    """The artifact cannot be traced (not a DVC output, or no dvc.lock to trace it in)."""


def _overlaps(a: str, b: str) -> bool:
    """Same path, or one inside the other (a dep on a dir uses every out under it)."""
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")


def _normalise(artifact: str, root: Path) -> str:
    path = Path(artifact)
    if path.is_absolute():
        try:
            path = path.resolve().relative_to(root.resolve())
        except ValueError as err:
            raise LineageError(f"{artifact}: not inside the repository {root}") from err
    return PurePosixPath(os.path.normpath(path.as_posix())).as_posix()


def _load_lock(root: Path) -> dict[str, dict[str, Any]]:
    path = root / LOCK_FILE
    if not path.is_file():
        raise LineageError(f"{path}: not found; run `dvc repro` first (lineage reads dvc.lock)")
    stages = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("stages")
    if not isinstance(stages, dict):
        raise LineageError(f"{path}: no stages recorded")
    return stages


def _producers(path: str, stages: dict[str, dict[str, Any]]) -> list[str]:
    return [name for name, entry in stages.items()
            if any(_overlaps(path, out["path"]) for out in entry.get("outs", []))]


def _dep_kind(path: str, produced: bool) -> str:
    if path == BASE_MODEL_DIR or path.startswith(BASE_MODEL_DIR + "/"):
        return "base-model"
    pure = PurePosixPath(path)
    if not produced and (pure.parts[0] in CODE_DIRS or pure.suffix in CODE_SUFFIXES):
        return "code"
    return "data"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise LineageError(f"{path}: not valid JSON: {err}") from err
    if not isinstance(record, dict):
        raise LineageError(f"{path}: expected a JSON object")
    return record


def _md5(path: Path) -> str | None:
    if not path.is_file():
        return None
    return hashlib.md5(path.read_bytes()).hexdigest()


def _validation(root: Path, stage: str, stages: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The gate's verdict as on disk, and whether that file is the one dvc.lock recorded."""
    locked = next(out.get("md5") for out in stages[stage]["outs"]
                  if out["path"] == VALIDATION_METRICS)
    path = root / VALIDATION_METRICS
    success = _read_json(path).get("success") if path.is_file() else None
    return {"stage": stage, "source": VALIDATION_METRICS, "success": success,
            "matches_lock": _md5(path) == locked}


def _cost(root: Path, stage: str, outs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The meter's record; `matches_lock` is None when the stage does not declare the file.

    A failed rerun rewrites the record but not dvc.lock: a mismatch says the figures are not
    those of the run that made the locked outputs.
    """
    source = f"{COST_DIR}/{stage}.json"
    path = root / source
    if not path.is_file():
        return None
    try:
        record = CostRecord.read(path)
    except ValueError as err:
        raise LineageError(str(err)) from err
    locked = [out.get("md5") for out in outs if out["path"] == source]
    return {"source": source, **{key: getattr(record, key) for key in COST_KEYS},
            "matches_lock": _md5(path) == locked[0] if locked else None}


def _git(root: Path) -> dict[str, Any]:
    def git(*args: str) -> str | None:
        try:
            # GIT_OPTIONAL_LOCKS=0: `git status` must not take index.lock (a reader only).
            done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                                  timeout=30, check=False,
                                  env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"})
        except OSError:  # git not installed
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None, "lock_committed": None}
    return {"commit": commit, "dirty": bool(git("status", "--porcelain")),
            "lock_committed": not git("status", "--porcelain", "--", LOCK_FILE)}


def lineage(artifact: str, repo_root: Path = Path(".")) -> dict[str, Any]:
    """The chain of stages behind `artifact` (upstream first), as dvc.lock recorded it."""
    root = Path(repo_root)
    stages = _load_lock(root)
    path = _normalise(artifact, root)
    owners = [(out["path"], name) for name, entry in stages.items()
              for out in entry.get("outs", [])
              if path == out["path"] or path.startswith(out["path"] + "/")]
    if owners:  # the output itself, or a file inside it: its innermost owner
        targets = [max(owners, key=lambda owner: len(owner[0]))]
    else:  # a directory assembled by several stages (weights and their model card)
        targets = [(out["path"], name) for name, entry in stages.items()
                   for out in entry.get("outs", []) if out["path"].startswith(path + "/")]
    if not targets:
        raise LineageError(f"{artifact}: not an output of any stage in {root / LOCK_FILE}")

    rank = {name: index for index, name in enumerate(stages)}  # dvc.lock order breaks ties
    upstream = {name: sorted({p for dep in entry.get("deps", [])
                              for p in _producers(dep["path"], stages) if p != name},
                             key=rank.__getitem__)
                for name, entry in stages.items()}
    order: list[str] = []

    def visit(name: str) -> None:  # depth-first post-order: every stage after its inputs
        if name in order:
            return
        for parent in upstream[name]:
            visit(parent)
        order.append(name)

    for _, name in targets:
        visit(name)
    gates = [name for name in stages
             if any(out["path"] == VALIDATION_METRICS for out in stages[name].get("outs", []))]

    def ancestry(name: str) -> set[str]:
        seen = {name}
        for parent in upstream[name]:
            seen |= ancestry(parent)
        return seen

    chain = []
    raw: dict[str, dict[str, Any]] = {}
    for name in order:
        entry = stages[name]
        deps = []
        for dep in entry.get("deps", []):
            made_by = [p for p in _producers(dep["path"], stages) if p != name]
            kind = _dep_kind(dep["path"], bool(made_by))
            deps.append({"path": dep["path"], "md5": dep.get("md5"), "kind": kind,
                         "produced_by": made_by})
            if not made_by and kind != "code":
                raw.setdefault(dep["path"], {"path": dep["path"], "md5": dep.get("md5"),
                                             "kind": kind, "used_by": []})["used_by"].append(name)
        ancestors = ancestry(name)
        gate = next((g for g in gates if g in ancestors), None)
        chain.append({
            "stage": name,
            "cmd": entry.get("cmd"),
            "upstream": upstream[name],
            "deps": deps,
            "params": entry.get("params", {}),
            "outs": [{"path": out["path"], "md5": out.get("md5")} for out in entry.get("outs", [])],
            "validation": _validation(root, gate, stages) if gate else None,
            "cost": _cost(root, name, entry.get("outs", [])),
        })
    parts = [{"path": out_path, "stage": name,
              "md5": next(out.get("md5") for out in stages[name]["outs"]
                          if out["path"] == out_path)} for out_path, name in targets]
    producer = max((part["stage"] for part in parts), key=order.index)  # the last to write
    output = dict(parts[0]) if len(parts) == 1 else {"path": path, "md5": None,
                                                     "stage": producer, "parts": parts}
    return {
        "artifact": path,
        "output": output,
        "stages": chain,
        "raw_sources": list(raw.values()),
        "git": _git(root),
        "lock_file": LOCK_FILE,
    }


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(value, dict) and value:
        return [item for key, sub in value.items()
                for item in _flatten(sub, f"{prefix}.{key}" if prefix else str(key))]
    return [(prefix, value)]


def _money(value: Any) -> str:
    return f"${value:,.4f}" if isinstance(value, (int, float)) else "unpriced"


def _cost_line(cost: dict[str, Any] | None) -> str:
    if cost is None:
        return f"no record in `{COST_DIR}/`"
    wall, energy = cost["wall_seconds"], cost["energy_kwh"]
    wall_text = f"{wall:.1f} s" if isinstance(wall, (int, float)) else "? s"
    energy_text = f"{energy:.6f} kWh" if isinstance(energy, (int, float)) else "? kWh"
    stale = ", differs from dvc.lock: a later run" if cost["matches_lock"] is False else ""
    return (f"{_money(cost['usd'])}, {wall_text} wall, {energy_text} ({cost['energy_method']}), "
            f"status {cost['status']} (`{cost['source']}`{stale})")


def _validation_line(verdict: dict[str, Any] | None) -> str:
    if verdict is None:
        return "not gated (no validation stage upstream)"
    result = {True: "PASSED", False: "FAILED", None: "unknown (no verdict on disk)"}
    state = result.get(verdict["success"], repr(verdict["success"]))
    stale = "" if verdict["matches_lock"] else " (file differs from dvc.lock: re-run since)"
    return f"{state} by `{verdict['stage']}` (`{verdict['source']}`){stale}"


def _output_line(out: dict[str, Any]) -> str:
    if "parts" not in out:
        return f"Output `{out['path']}` (md5 `{out['md5']}`) of stage `{out['stage']}`"
    parts = "; ".join(f"`{p['path']}` (md5 `{p['md5']}`) of `{p['stage']}`" for p in out["parts"])
    return f"Directory `{out['path']}` holds outputs of several stages: {parts}"


def render_markdown(info: dict[str, Any]) -> str:
    """A readable report of `lineage(...)`'s result."""
    git = info["git"]
    if git["commit"] is None:
        where = "no git commit (not a repository, or nothing committed yet)"
    else:
        where = (f"git `{git['commit'][:12]}`"
                 f"{' with uncommitted changes' if git['dirty'] else ' (clean)'}; dvc.lock "
                 f"{'committed' if git['lock_committed'] else 'has uncommitted changes'}")
    out = info["output"]
    lines = [
        f"# Lineage of `{info['artifact']}`",
        "",
        f"{_output_line(out)}, recorded in `{info['lock_file']}`. Workspace: {where}.",
        "",
        "## Raw sources",
        "",
    ]
    if info["raw_sources"]:
        lines += ["| path | kind | md5 | used by |", "|---|---|---|---|"]
        lines += [f"| `{s['path']}` | {s['kind']} | `{s['md5']}` | {', '.join(s['used_by'])} |"
                  for s in info["raw_sources"]]
    else:
        lines.append("No file inputs from outside the pipeline: its sources are named by params "
                     "(packages, generators), listed per stage below.")
    for number, stage in enumerate(info["stages"], start=1):
        cmd = stage["cmd"] if isinstance(stage["cmd"], str) else " && ".join(stage["cmd"] or [])
        params = [(f"{name}:{key}" if name != "params.yaml" else key, value)
                  for name, values in stage["params"].items() for key, value in _flatten(values)]
        lines += [
            "",
            f"## {number}. `{stage['stage']}`",
            "",
            f"- command: `{cmd}`",
            f"- upstream: {', '.join(f'`{u}`' for u in stage['upstream']) or 'none'}",
            f"- validation: {_validation_line(stage['validation'])}",
            f"- cost: {_cost_line(stage['cost'])}",
            f"- params:{'' if params else ' none'}",
            *(f"  - `{key}` = `{json.dumps(value)}`" for key, value in params),
            "",
            "| dep | kind | md5 | from |",
            "|---|---|---|---|",
        ]
        lines += [f"| `{d['path']}` | {d['kind']} | `{d['md5']}` | "
                  f"{', '.join(d['produced_by']) or 'source'} |" for d in stage["deps"]]
    return "\n".join(lines) + "\n"
