"""Training checkpoints: trainable weights, optimizer, scheduler, RNG and position, atomically.

A run killed at any instant leaves only complete checkpoints (each is a directory renamed into
place), so a restart resumes from the newest one and ends with the same weights as a run that was
never interrupted. Each checkpoint also holds a copy of the run's training logs as they stood at
its step: dvclive writes its files in place, so a kill can leave them half-written, and steps
logged after the checkpoint would otherwise be logged twice once the run repeats them.
"""

from __future__ import annotations

import fcntl
import json
import os
import pickle
import random
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from millennial.atomic import atomic_dir, write_json
from millennial.errors import UserError

PREFIX = "step-"
IDENTITY_FILE = "identity.json"
LOCK_FILE = "trainer.lock"
LOGS = "logs"
AVERAGE_FILE = "average.safetensors"


class CheckpointError(UserError):
    """A checkpoint on disk that must not be resumed (not plain state, or not finite)."""


class RunDirBusy(UserError):
    """Another live trainer holds the run directory."""


@dataclass
class Progress:
    """Where a run stands: what a resumed run needs besides tensors."""

    step: int = 0
    tokens: int = 0
    losses: list[float] = field(default_factory=list)
    train_seconds: float = 0.0  # spent in optimizer steps so far, all invocations together


def rng_state() -> dict[str, Any]:
    """Every generator's state as tensors, lists and numbers: loadable with weights_only."""
    name, keys, position, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    name, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached))
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
    for what, tensors in (("weights", trainable), ("weight average", average or {})):
        broken = sorted(name for name, t in tensors.items() if not torch.isfinite(t).all())
        if broken:
            raise CheckpointError(f"{target}: not saved: the {what} are not finite "
                                  f"({', '.join(broken[:3])}); the last good checkpoint is kept")
    try:
        _write_checkpoint(target, progress, trainable, optimizer_state, scheduler_state,
                          rng_states, logs, average)
    except (OSError, RuntimeError) as err:  # torch.save's "enforce fail" on a full disk
        raise CheckpointError(f"{target}: could not write the checkpoint ({err}); is "
                              f"{directory} full or read-only? The last good one is kept") from err
    for old in list_checkpoints(directory)[:-keep]:
        shutil.rmtree(old)
    return target


def _write_checkpoint(target: Path, progress: Progress, trainable: dict[str, torch.Tensor],
                      optimizer_state: dict[str, Any], scheduler_state: dict[str, Any],
                      rng_states: list[dict[str, Any]], logs: Path | None,
                      average: dict[str, torch.Tensor] | None) -> None:
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
        optimizer_state=_load_state(path / "optimizer.pt"),
        scheduler_state=_load_state(path / "scheduler.pt"),
        rng=_load_state(path / f"rng-{rank}.pt"),
        average=load_file(str(path / AVERAGE_FILE)) if (path / AVERAGE_FILE).is_file() else None,
    )


def _load_state(path: Path) -> Any:
    """Tensors, containers and numbers only: a checkpoint file cannot run code when loaded."""
    try:
        return torch.load(path, weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(f"{path}: not a plain state file, refused (it may carry code; "
                              f"delete the checkpoint to retrain from the last good one): "
                              f"{str(error).splitlines()[0]}") from error


@contextmanager
def lock_run_dir(run_dir: Path) -> Iterator[None]:
    """Hold `run_dir` for one trainer: a second, started while the first lives (an orphaned
    stage, a concurrent rerun), is refused instead of writing the same checkpoints and logs.

    The lock is the kernel's (flock), so a killed trainer releases it with its last breath.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    with path.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise RunDirBusy(f"{run_dir}: another trainer is running here (pid {holder}); "
                             "wait for it or stop it, then rerun") from err
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


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
