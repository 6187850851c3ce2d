"""The one base class of errors a user fixes, and the one way stage entries report them.

Stage entries run their work through `run_reporting`: a user error (params, input data,
artifacts on disk), a missing file, or a disk the user must free or unlock is one line naming the
file, key or line, and exit 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable


class UserError(ValueError):
    """Bad input: the message names the file actually read and the key or line at fault."""


# What stage entries report as a message: a user error, or a file the user has not made yet.
USER_ERRORS = (UserError, FileNotFoundError)
# Disk states the user fixes (full, read-only, no permission), reported with the path.
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})


def run_reporting(stage: str, work: Callable[[], int]) -> int:
    """`work()`'s exit code, or 2 with `<stage>: error: <message>` on stderr for a user's fix."""
    try:
        return work()
    except USER_ERRORS as err:
        message = str(err)
    except OSError as err:
        if err.errno not in DISK_ERRNOS:
            raise
        message = f"{err.filename}: {err.strerror}" if err.filename else str(err)
    print(f"{stage}: error: {message}", file=sys.stderr)
    return 2
