"""One thin entry per DVC stage (`python -m stages.<name>`, as dvc.yaml runs them).

Every stage dies with the process that started it (`dvc`, a Prefect worker, torchrun): a killed
parent must not leave an orphan training on, which a rerun would then race in the same run
directory. A daemon thread watches that process and ends the stage with SIGTERM once it is gone
(checkpoints and artifacts are written atomically, so nothing half-written survives). DVC runs
a stage through `$SHELL -c` (`/bin/sh` when unset), and a shell that does not exec its command
outlives a killed dvc, so the process watched is the nearest ancestor that is not a shell.
"""

import os
import signal
import threading
import time
from pathlib import Path

_SHELLS = frozenset({"sh", "dash", "bash", "zsh", "ash", "ksh", "busybox"})
_POLL_SECONDS = 1.0


def _stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat after the command name: [state, ppid, ...]; None when unreadable."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None


def _name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _starter() -> tuple[int, list[str] | None]:
    """The nearest ancestor that is not a shell, and its stat (to tell a reused pid)."""
    pid = os.getppid()
    while _name(pid) in _SHELLS and (stat := _stat(pid)) is not None and int(stat[1]) > 1:
        pid = int(stat[1])
    return pid, _stat(pid)


def _alive(pid: int, start: list[str] | None) -> bool:
    stat = _stat(pid)
    if start is None or stat is None:  # no /proc (not Linux): the parent, by its pid
        return os.getppid() == pid or _stat(pid) is not None
    return stat[0] != "Z" and stat[19] == start[19]  # not a zombie, same start time


def _end_with_starter() -> None:
    pid, start = _starter()
    parent = os.getppid()
    while os.getppid() == parent and _alive(pid, start):
        time.sleep(_POLL_SECONDS)
    os.kill(os.getpid(), signal.SIGTERM)


threading.Thread(target=_end_with_starter, name="end-with-starter", daemon=True).start()
