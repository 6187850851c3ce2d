"""Training checkpoints: trainable weights, optimizer, scheduler, RNG and position, atomically.

A run killed at any instant leaves only complete checkpoints (each is a directory renamed into
place), so a restart resumes from the newest one and ends with the same weights as a run that was
never interrupted. Each checkpoint also holds a copy of the run's training logs as they stood at
its step: dvclive writes its files in place, so a kill can leave them half-written, and steps
logged after the checkpoint would otherwise be logged twice once the run repeats them.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from millennial.atomic import atomic_dir, write_json

PREFIX = "step-"
IDENTITY_FILE = "identity.json"
LOGS = "logs"
AVERAGE_FILE = "average.safetensors"


@dataclass
class Progress:
    """Where a run stands: what a resumed run needs besides tensors."""

    step: int = 0
    tokens: int = 0
    losses: list[float] = field(default_factory=list)


def rng_state() -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    directory: Path,
    progress: Progress,
    trainable: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
    scheduler_state: dict[str, Any],
    rng_states: list[dict[str, Any]],
    keep: int,
    logs: Path | None = None,
    average: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write `directory/step-NNNNNN/` whole, then drop all but the newest `keep` checkpoints.

    `logs` (the run's dvclive directory, complete up to this step) is copied in alongside, and
    the weight average, when the run keeps one.
    """
    target = directory / f"{PREFIX}{progress.step:06d}"
    with atomic_dir(target) as tmp:
        save_file({n: t.detach().cpu().contiguous() for n, t in trainable.items()},
                  str(tmp / "trainable.safetensors"))
        if average is not None:
            save_file({n: t.detach().cpu().contiguous() for n, t in average.items()},
                      str(tmp / AVERAGE_FILE))
        torch.save(optimizer_state, tmp / "optimizer.pt")
        torch.save(scheduler_state, tmp / "scheduler.pt")
        for rank, state in enumerate(rng_states):  # one per process: dropout streams differ
            torch.save(state, tmp / f"rng-{rank}.pt")
        (tmp / "progress.json").write_text(json.dumps(asdict(progress)) + "\n")
        if logs is not None and logs.is_dir():
            shutil.copytree(logs, tmp / LOGS)
    for old in list_checkpoints(directory)[:-keep]:
        shutil.rmtree(old)
    return target


def list_checkpoints(directory: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary directories never match the prefix)."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.is_dir() and p.name.startswith(PREFIX))


@dataclass
class Checkpoint:
    path: Path
    progress: Progress
    trainable: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any]
    scheduler_state: dict[str, Any]
    rng: dict[str, Any]
    average: dict[str, torch.Tensor] | None = None  # the weight average (EMA), if kept

    def restore_logs(self, logs: Path) -> bool:
        """Put back the logs saved with this checkpoint at `logs`; False if it saved none."""
        saved = self.path / LOGS
        if not saved.is_dir():
            return False
        with atomic_dir(logs) as tmp:
            shutil.copytree(saved, tmp, dirs_exist_ok=True)
        return True


def load_latest(directory: Path, rank: int) -> Checkpoint | None:
    checkpoints = list_checkpoints(directory)
    if not checkpoints:
        return None
    path = checkpoints[-1]
    progress = Progress(**json.loads((path / "progress.json").read_text()))
    return Checkpoint(
        path=path,
        progress=progress,
        trainable=load_file(str(path / "trainable.safetensors")),
        optimizer_state=torch.load(path / "optimizer.pt", weights_only=False),
        scheduler_state=torch.load(path / "scheduler.pt", weights_only=False),
        rng=torch.load(path / f"rng-{rank}.pt", weights_only=False),
        average=load_file(str(path / AVERAGE_FILE)) if (path / AVERAGE_FILE).is_file() else None,
    )


def claim_run_dir(run_dir: Path, identity: dict[str, Any]) -> list[str]:
    """Make `run_dir` this run's: checkpoints resume only the run that wrote them.

    `identity` names everything that shapes the trajectory (params, data, base, what trains).
    Checkpoints written under another identity, or under none, are dropped: resuming them would
    silently skip training for the new settings. Half-written checkpoints a kill left behind
    (hidden temporary directories, as large as a whole one) go too. Returns the keys that changed.
    """
    identity = json.loads(json.dumps(identity))  # tuples -> lists, as read back from disk
    path = run_dir / IDENTITY_FILE
    previous = json.loads(path.read_text()) if path.is_file() else None
    changed = [] if previous is None else sorted(
        key for key in identity.keys() | previous.keys() if identity.get(key) != previous.get(key))
    checkpoints = run_dir / "checkpoints"
    if changed or previous is None:
        shutil.rmtree(checkpoints, ignore_errors=True)
    for leftover in checkpoints.glob(f".{PREFIX}*"):
        shutil.rmtree(leftover)
    write_json(path, identity)
    return changed
