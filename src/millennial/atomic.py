"""Atomic writes: outputs appear whole or not at all, and old outputs survive a failure."""

from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_dir(target: str | Path, keep_others: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces `target` in one rename.

    On any error the temporary directory is removed and `target` is left as it was. With
    `keep_others`, files of the old `target` the new one does not write carry over (what other
    tools keep beside an artifact: a model card, DVC's .gitignore). Temporaries that a killed
    writer left for `target` are swept first (their names carry the writer's pid).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    sweep_leftovers(target)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(target), dir=target.parent))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp makes 0700; outputs should be as readable as any
    try:
        yield tmp
        if keep_others and target.is_dir():
            for old in target.iterdir():
                if old.is_file() and not (tmp / old.name).exists():
                    shutil.copy2(old, tmp / old.name)
        backup = target.with_name(f".{target.name}.old-{os.getpid()}")
        if target.exists():
            target.rename(backup)
        tmp.rename(target)
        shutil.rmtree(backup, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _temp_prefix(target: Path) -> str:
    return f".{target.name}.tmp-{os.getpid()}-"


def sweep_leftovers(target: Path) -> None:
    """Remove the temporaries and backups of `target` whose writer is no longer alive."""
    for leftover in target.parent.glob(f".{glob.escape(target.name)}.*"):
        kind, _, rest = leftover.name[len(target.name) + 2:].partition("-")
        pid = rest.partition("-")[0]
        if kind in ("tmp", "old") and pid.isdigit() and not _alive(int(pid)):
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def write_text(path: str | Path, text: str) -> None:
    """Write `text` to `path` via a temp file and rename, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_leftovers(path)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | Path, data: Any) -> None:
    """Atomically write `data` as indented, key-sorted JSON (stable diffs for DVC metrics)."""
    write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_parquet(path: str | Path, table: Any) -> None:
    """Atomically write a pyarrow Table as Parquet (temp file in the same folder, then rename)."""
    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_leftovers(path)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), dir=path.parent)
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
