import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

# A run small enough for a unit test: seconds on 2 CPU cores. SHARED holds the keys every
# method reads; TINY is a supervised run (train.batch_size is refused for the others).
SHARED = [
    "model.n_layer=1", "model.n_head=2", "model.d_model=32", "model.max_len=24",
    "train.log_every=5", "eval.problems=24", "eval.every=10", "eval.batch_size=64",
    "task.difficulty=[1,2]", "task.extrapolate=[3,3]", "optim.warmup_steps=5", "progress=false",
]
TINY = [*SHARED, "train.batch_size=16"]
# the self-improvement methods at the same size: a tiny batch, a tiny reward net
SMALL = [*SHARED, "improve.problems_per_iter=6", "improve.samples=3", "reward.n_layer=1", "reward.d_model=32",
         "reward.n_head=2", "reward.init=scratch", "eval.problems=12"]
SEARCH = ["search.num_simulations=4", "search.leaves_per_call=2", "search.top_k=4"]


def cli_env() -> dict:
    """The environment for a child ``python -m emergent``: this checkout first on the path."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def run_cli(*args: str, timeout: float = 300, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    """Run the real entry point, ``python -m emergent``, in a subprocess."""
    return subprocess.run([sys.executable, "-m", "emergent", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=env or cli_env(), **kwargs)


def wait_until(condition, proc: subprocess.Popen | None = None, *, timeout: float = 300.0) -> None:
    """Wait for an event (a file written, a run held): ``condition()`` true. Fails if
    ``proc`` exits first. ``timeout`` only catches a hang; no outcome depends on it."""
    import time

    end = time.monotonic() + timeout
    while not condition():
        assert proc is None or proc.poll() is None, f"the process exited ({proc.returncode}) before the event"
        assert time.monotonic() < end, f"no event after {timeout} s: hung"
        time.sleep(0.02)


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, read from /proc (children before their parents die)."""
    parent = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parent[int(stat.parent.name)] = int(fields[1])
    out, frontier = [], [pid]
    while frontier:
        kids = [p for p, pp in parent.items() if pp in frontier]
        out += kids
        frontier = kids
    return out


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a process and everything below it (Ray's workers sit in process groups of their own)."""
    for pid in [proc.pid, *descendants(proc.pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()


def scalars(run_dir, *, perf: bool = True) -> dict[str, list[tuple[int, float]]]:
    """Every scalar a run logged, read back from its TensorBoard events: tag -> [(step, value)]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]
            if perf or not t.startswith("perf/")}


# The only reason a test may skip: it needs CUDA (marker ``gpu``). Any other skip fails, so
# a test that cannot run on CI's machine says so in red instead of passing by skipping.
SKIP_MARKERS = ("gpu",)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and not any(m in item.keywords for m in SKIP_MARKERS):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped without a skip marker ({', '.join(SKIP_MARKERS)}): {reason}"


def pytest_terminal_summary(terminalreporter):
    skipped = terminalreporter.stats.get("skipped", [])
    if skipped:
        terminalreporter.write_line(f"{len(skipped)} skipped, all marked gpu (no CUDA on this machine)")


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(min(2, os.cpu_count() or 1))
