import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

# A run small enough for a unit test: seconds on 2 CPU cores.
TINY = [
    "model.n_layer=1", "model.n_head=2", "model.d_model=32", "model.max_len=24",
    "train.batch_size=16", "train.log_every=5", "eval.problems=24", "eval.every=10", "eval.batch_size=64",
    "task.difficulty=[1,2]", "task.extrapolate=[3,3]", "optim.warmup_steps=5", "progress=false",
]


def cli_env() -> dict:
    """The environment for a child ``python -m emergent``: this checkout first on the path."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def run_cli(*args: str, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """Run the real entry point, ``python -m emergent``, in a subprocess."""
    return subprocess.run([sys.executable, "-m", "emergent", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=cli_env(), **kwargs)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(min(2, os.cpu_count() or 1))
