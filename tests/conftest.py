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
    "model.n_layer=1",
    "model.n_head=2",
    "model.d_model=32",
    "model.max_len=24",
    "train.log_every=5",
    "eval.problems=24",
    "eval.every=10",
    "eval.batch_size=64",
    "task.difficulty=[1,2]",
    "task.extrapolate=[3,3]",
    "optim.warmup_steps=5",
    "progress=false",
]
TINY = [*SHARED, "train.batch_size=16"]
# the self-improvement methods at the same size: a tiny batch, a tiny reward net
SMALL = [
    *SHARED,
    "improve.problems_per_iter=6",
    "improve.samples=3",
    "reward.n_layer=1",
    "reward.d_model=32",
    "reward.n_head=2",
    "reward.init=scratch",
    "eval.problems=12",
]
SEARCH = ["search.num_simulations=4", "search.leaves_per_call=2", "search.top_k=4"]


def cli_env() -> dict:
    """The environment for a child ``python -m emergent``: this checkout first on the path."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def run_cli(*args: str, timeout: float = 300, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    """Run the real entry point, ``python -m emergent``, in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "emergent", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=env or cli_env(),
        **kwargs,
    )


def wait_until(
    condition, proc: subprocess.Popen | None = None, *, timeout: float = 300.0, log: Path | None = None
) -> None:
    """Wait for an event (a file written, a run held): ``condition()`` true. Fails if
    ``proc`` exits first (with the tail of ``log``, where its output went). ``timeout``
    only catches a hang; no outcome depends on it."""
    import time

    end = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-3000:] if log is not None and log.is_file() else ""
            raise AssertionError(f"the process exited ({proc.returncode}) before the event\n{tail}")
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
    return {
        t: [(e.step, e.value) for e in acc.Scalars(t)]
        for t in acc.Tags()["scalars"]
        if perf or not t.startswith("perf/")
    }


# The only reason a test may skip: it needs CUDA (marker ``gpu``). Any other skip fails, so
# a test that cannot run on CI's machine says so in red instead of passing by skipping.
SKIP_MARKERS = ("gpu",)


def _group(item) -> str:
    mark = item.get_closest_marker("xdist_group")
    return mark.args[0] if mark is not None and mark.args else ""


def pytest_collection_modifyitems(config, items):
    # the two long chains start first, one on each worker (xdist hands out the largest group
    # first, then in this order): the Ray group, then the quickstart; the rest fill in
    items.sort(key=lambda item: {"ray": 0, "quickstart": 1}.get(_group(item), 2))
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


# The suite runs on pytest-xdist workers (pyproject's addopts: -n 2 --dist loadgroup). The
# modules that start Ray carry xdist_group("ray") and so run one after another on one worker:
# test_ray_job's `ray stop` ends every Ray on the machine, and test_sweep_cluster's cluster
# lives in its worker's process. The quickstart (two training processes of its own) is a
# group of its own. Each worker's in-process torch gets its share of the cores.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
# Ray lowers its workers' priority (nice 15) by default: beside the quickstart's two training
# processes its actors would wait on them for minutes. Every Ray a test starts, in this
# process or in a child, reads this.
os.environ.setdefault("RAY_worker_niceness", "0")
# Every process a test starts (a run, a sweep, Ray's workers) trains a model of a few
# thousand parameters, often beside another: torch's default of one thread per core
# only oversubscribes the cores, and OpenMP threads spin while they wait (measured: the
# alphazero kill-and-resume test burnt 30 CPU-seconds at the default, 12 at one thread).
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Every process a test starts compiles this checkout's modules again where bytecode is not
# written (PYTHONDONTWRITEBYTECODE, set on some machines): about 0.1 CPU-second for each
# process (measured here). They may write it (__pycache__ is git-ignored).
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)


_NICED = []


@pytest.fixture(autouse=True)
def _priority(request):
    """Under xdist the quickstart (CPU-bound: two training processes for two minutes) is the
    suite's longest chain, the Ray tests mostly wait on process starts: every worker lowers
    its own priority (and its children's) before its first other test, so the quickstart's
    processes, started from a worker that had not, take the cores when both want them."""
    if WORKERS > 1 and not _NICED and _group(request.node) != "quickstart":
        os.nice(5)
        _NICED.append(True)


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1) // WORKERS))
