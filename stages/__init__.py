"""One thin entry per DVC stage (`python -m stages.<name>`, as dvc.yaml runs them).

Every stage dies with the process that started it (`dvc`, a Prefect worker, torchrun): a killed
parent must not leave an orphan training on, which a rerun would then race in the same run
directory. A daemon thread watches the parent and ends the stage with SIGTERM once it is gone
(checkpoints and artifacts are written atomically, so nothing half-written survives).
"""

import os
import signal
import threading
import time

_PARENT = os.getppid()
_POLL_SECONDS = 1.0


def _end_with_parent() -> None:
    while os.getppid() == _PARENT:
        time.sleep(_POLL_SECONDS)
    os.kill(os.getpid(), signal.SIGTERM)


threading.Thread(target=_end_with_parent, name="end-with-parent", daemon=True).start()
