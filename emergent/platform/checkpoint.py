"""Checkpoints: written atomically, read without unpickling arbitrary objects.

A checkpoint is one ``torch.save`` file holding only tensors and plain Python values
(model and optimiser state, step, RNG states, the FLOP ledger, the resolved config as
YAML). It is written to a temporary file in the same directory, fsync'd, then renamed
over the old one: a reader (or a resumed run after SIGKILL) sees the previous complete
checkpoint or the new complete one, never a torn file. Loading uses
``torch.load(weights_only=True)``, which refuses to construct arbitrary objects.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError

FORMAT = "emergent/checkpoint"
VERSION = 1
REQUIRED = ("format", "version", "step", "model", "config")
LAST = "last.pt"
# what `emergent sweep` leaves in a run's directory (and `emergent report` reads), and beside the runs
DONE, FAILED, STARTED = "done.json", "failed.txt", "started"
SWEEP_FILE = "sweep.json"  # every cell of a sweep, finished or not


_UMASK = os.umask(0)  # read once: os.umask can only be read by setting it
os.umask(_UMASK)


def atomic_write(path: Path, write) -> None:
    """Call ``write(fileobj)`` on a temp file next to ``path``, fsync, and rename into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes it 0600: give it the mode open() would
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    state = {"format": FORMAT, "version": VERSION, **state}
    missing = [k for k in REQUIRED if k not in state]
    assert not missing, f"checkpoint state lacks {missing}"
    atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and check a checkpoint; every failure is a CheckpointError naming the file."""
    p = Path(path)
    if p.is_dir():
        p = p / LAST
    if not p.is_file():
        raise CheckpointError(f"checkpoint not found: {p}")
    try:
        state = torch.load(p, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, RuntimeError, ValueError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {p} is corrupt or not a safe emergent checkpoint ({first[:200]})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{p} is not an emergent checkpoint (no '{FORMAT}' format marker)")
    if state.get("version") != VERSION:
        raise CheckpointError(
            f"checkpoint {p} has format version {state.get('version')}; this emergent reads {VERSION}"
        )
    missing = [k for k in REQUIRED if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {p} lacks {missing}")
    return state


def load_model_state(model: torch.nn.Module, state: dict[str, Any], path: str | Path) -> None:
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        detail = " ".join(str(e).split())[:300]
        raise CheckpointError(f"checkpoint {path} does not match the model config: {detail}") from None
