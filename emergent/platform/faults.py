"""Fault injection: a run held at a known step, so a test kills it there instead of racing a clock.

``EMERGENT_HOLD="<run name>:<step>"`` (comma-separated for several runs): the run of that
name, right after it checkpoints a step at or past ``<step>``, writes ``<run dir>/held``
(``"<step> <pid>"``) and waits until the file is removed, or until it is killed; once per
process. A test
waits for the file (an event, not a deadline), then kills the process, its worker or its
node, or removes the file to let the run go on. Unset, this costs one dictionary lookup
per checkpoint.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

HOLD_ENV = "EMERGENT_HOLD"
HELD = "held"
_released: set[str] = set()  # runs this process held and let go


def hold_step(run_name: str) -> int | None:
    """The step ``EMERGENT_HOLD`` holds this run at, or None."""
    for item in filter(None, os.environ.get(HOLD_ENV, "").split(",")):
        name, _, step = item.rpartition(":")
        if name == run_name:
            return int(step)
    return None


def after_checkpoint(run_dir: Path, step: int) -> None:
    """Called by ``Run.checkpoint`` once the checkpoint of ``step`` is on disk."""
    at = hold_step(run_dir.name)
    if at is None or step < at or str(run_dir) in _released:
        return
    marker = run_dir / HELD
    tmp = run_dir / f".{HELD}.tmp"
    tmp.write_text(f"{step} {os.getpid()}")  # the step held, and the process holding it
    os.replace(tmp, marker)  # whole when seen
    while marker.exists():
        time.sleep(0.02)
    _released.add(str(run_dir))
