"""``emergent sweep``: a grid validated before anything runs, run as Ray tasks, re-runnable."""
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, cli_env, scalars
from emergent import tags

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow

TINY_SWEEP = """
experiment: tiny_sweep
base:
  model: {n_layer: 1, n_head: 2, d_model: 32, max_len: 24}
  task: {difficulty: [1, 2], extrapolate: [3, 3]}
  eval: {problems: 12, every: 2, batch_size: 64, splits: [test, extrapolate], pass_k: [1, 2]}
  train: {steps: 3, log_every: 1}
  optim: {warmup_steps: 2}
grid:
  train.method: [supervised, expert_iteration]
  seed: [0, 1]
per_method:
  supervised: {train.batch_size: 16}
  expert_iteration: {improve: {problems_per_iter: 6, samples: 3}, reward: {init: scratch, n_layer: 1, d_model: 32, n_head: 2}}
warm_start: {train.steps: 2}
resources: {cpus: 1}
"""
RUNS = ["supervised_seed0", "supervised_seed1", "expert_iteration_seed0", "expert_iteration_seed1"]
WARM = ["warm_start_seed0", "warm_start_seed1"]


def env(tmp_path) -> dict:
    home = tmp_path / "home"  # no Ray state from elsewhere
    home.mkdir(exist_ok=True)
    out = {**cli_env(), "HOME": str(home), "RAY_USAGE_STATS_ENABLED": "0"}
    out.pop("RAY_ADDRESS", None)
    return out


def sweep_cmd(tmp_path, text, *overrides) -> list[str]:
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    return [sys.executable, "-m", "emergent", "sweep", str(path), f"logdir={tmp_path / 'runs'}", *overrides]


def sweep(tmp_path, text=TINY_SWEEP, *overrides):
    return subprocess.run(sweep_cmd(tmp_path, text, *overrides), capture_output=True, text=True, timeout=400,
                          cwd=ROOT, env=env(tmp_path))


def report(tmp_path, root) -> str:
    proc = subprocess.run([sys.executable, "-m", "emergent", "report", str(root)], capture_output=True, text=True,
                          timeout=300, cwd=ROOT, env=env(tmp_path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return (root / "report.md").read_text()


def runs_in(root) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir())


def check_report(text: str, root, methods, seeds: int, pass_k: bool = True) -> None:
    """report.md holds a row per method with its seed count, the difference from supervised
    with its interval, and links non-empty figures."""
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}
    for m in methods:
        assert rows[m].split("|")[3].strip() == str(seeds), rows[m]
    assert re.search(r"[+-]\d\.\d{3} \[[+-]\d\.\d{3}, [+-]\d\.\d{3}\] at \d", rows["expert_iteration"]), rows
    assert rows["supervised"].split("|")[9].strip() == "reference"
    figures = ["compute.png", "size.png", "difficulty.png", *(["pass_at_k.png"] if pass_k else [])]
    for fig in figures:
        assert f"]({fig})" in text and (root / fig).stat().st_size > 10_000, fig


def test_a_tiny_sweep_runs_every_cell_from_shared_warm_starts_and_skips_them_when_run_again(tmp_path):
    proc = sweep(tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    root = tmp_path / "runs" / "tiny_sweep"
    assert runs_in(root) == sorted(RUNS + WARM)
    for name in RUNS + WARM:
        logged = scalars(root / name)
        assert tags.eval_tag("test", "exact_match") in logged, name
        assert json.loads((root / name / "done.json").read_text())["final"]["step"] > 0
    # the self-improvement runs started from their seed's warm start: its compute is theirs
    warm = scalars(root / "warm_start_seed1")[tags.COMPUTE_TOTAL_FLOPS][-1][1]
    ei = scalars(root / "expert_iteration_seed1")
    assert ei[tags.compute_tag(tags.WARM_START)][-1][1] == pytest.approx(warm)
    # one CPU a run on a local Ray of this machine's cores: never more runs at once than cores
    running = [int(m) for m in re.findall(r"(\d+) running", proc.stdout)]
    assert running and max(running) <= (os.cpu_count() or 1) and "6 done, 0 running, 0 failed, 0 pending" in proc.stdout
    again = sweep(tmp_path)
    assert again.returncode == 0 and "6 already finished (skipped)" in again.stdout, again.stdout[-2000:]
    text = report(tmp_path, root)
    assert "All 6 runs finished" in text and "Partial" not in text
    check_report(text, root, ["supervised", "expert_iteration", "warm start"], seeds=2)


def test_a_bad_cell_exits_2_before_any_run_starts(tmp_path):
    proc = sweep(tmp_path, TINY_SWEEP.replace("seed: [0, 1]", "model.pos: [rope, alibi]"))
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert err.startswith("emergent: error: sweep cell ") and "alibi" in err and "model.pos" in err, err
    assert not (tmp_path / "runs").exists()


def test_a_sweep_of_runtime_ray_runs_each_in_its_own_placement_group_and_reports(tmp_path):
    # every run has a learner actor and a trace worker of its own: a run needs 2 CPUs, and
    # Ray reserves both before it starts (a run holding one CPU while its worker waits for
    # another would deadlock the sweep on a 2-core machine)
    text = TINY_SWEEP.replace("warm_start: {train.steps: 2}", "")
    proc = sweep(tmp_path, text, "runtime=ray", "ray.workers=1")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    root = tmp_path / "runs" / "tiny_sweep"
    assert runs_in(root) == sorted(RUNS)
    for name in RUNS:
        logged = scalars(root / name)
        assert tags.eval_tag("test", "exact_match") in logged and tags.PERF_WORKER_UTILISATION in logged, name
    check_report(report(tmp_path, root), root, ["supervised", "expert_iteration"], seeds=2)


KILLED = """
experiment: killed
base:
  model: {n_layer: 1, n_head: 2, d_model: 32, max_len: 24}
  task: {difficulty: [1, 2], extrapolate: [3, 3]}
  eval: {problems: 12, every: 100, batch_size: 64, splits: [test]}
  train: {log_every: 10}
  optim: {warmup_steps: 2}
  checkpoint_every: 20
grid:
  train.method: [supervised, expert_iteration]
  train.steps: [2, 400]
per_method:
  supervised: {train.batch_size: 16}
  expert_iteration: {improve: {init_from: BAD}}
resources: {cpus: 1}
"""


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


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads the process tree from /proc")
def test_a_sweep_killed_with_sigkill_and_run_again_skips_what_had_finished_and_names_what_failed(tmp_path):
    # the expert-iteration runs start from a file that passes validation (it exists) but is
    # no checkpoint: they fail at run time, and the sweep goes on without them
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    text = KILLED.replace("BAD", f"'{bad}'")
    root = tmp_path / "runs" / "killed"
    short, long = root / "supervised_steps2", root / "supervised_steps400"
    proc = subprocess.Popen(sweep_cmd(tmp_path, text), cwd=ROOT, env=env(tmp_path), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:  # kill everything it started once the short run is done and the long one has a checkpoint
        deadline = time.time() + 240
        while not ((short / "done.json").is_file() and (long / "last.pt").is_file()):
            assert proc.poll() is None and time.time() < deadline, "the sweep ended before it could be killed"
            time.sleep(0.1)
    finally:  # the whole tree: Ray's workers sit in process groups of their own
        for pid in [proc.pid, *descendants(proc.pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait()
    assert not (long / "done.json").exists()
    partial = report(tmp_path, root)
    assert "Partial report**: 1 of 4 runs finished, " in partial
    finished = {p: p.stat().st_mtime_ns for p in short.rglob("*")}
    again = sweep(tmp_path, text)
    assert again.returncode == 1, again.stdout[-3000:] + again.stderr[-3000:]
    assert "1 already finished (skipped)" in again.stdout
    assert {p: p.stat().st_mtime_ns for p in short.rglob("*")} == finished  # not re-run: nothing touched
    assert json.loads((long / "done.json").read_text())["final"]["step"] == 400
    for name in ("expert_iteration_steps2", "expert_iteration_steps400"):
        assert "checkpoint" in (root / name / "failed.txt").read_text()
        assert f"run {name} failed" in again.stdout
    assert "2 of 4 runs failed" in again.stdout
    assert ("The sweep ended: 2 of 4 runs finished; 2 failed (expert_iteration_steps2, expert_iteration_steps400"
            in report(tmp_path, root))
