"""``emergent sweep``: a grid validated before anything runs, run as Ray tasks, re-runnable."""
import json
import os
import re
import subprocess
import sys

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
  eval: {problems: 12, every: 2, batch_size: 64, splits: [test]}
  train: {steps: 3, log_every: 1}
  optim: {warmup_steps: 2}
grid:
  train.method: [supervised, expert_iteration]
  seed: [0, 1]
per_method:
  supervised: {train.batch_size: 16}
  expert_iteration: {improve: {problems_per_iter: 6, samples: 3}, reward: {init: scratch, n_layer: 1, d_model: 32, n_head: 2}}
warm_start: {train.steps: 4}
resources: {cpus: 1}
"""
RUNS = ["supervised_seed0", "supervised_seed1", "expert_iteration_seed0", "expert_iteration_seed1"]
WARM = ["warm_start_seed0", "warm_start_seed1"]


def sweep(tmp_path, text=TINY_SWEEP, *overrides):
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    env_home = tmp_path / "home"
    env_home.mkdir(exist_ok=True)
    env = {**cli_env(), "HOME": str(env_home), "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([sys.executable, "-m", "emergent", "sweep", str(path), f"logdir={tmp_path / 'runs'}",
                           *overrides], capture_output=True, text=True, timeout=400, cwd=ROOT, env=env)


def test_a_tiny_sweep_runs_every_cell_from_shared_warm_starts_and_skips_them_when_run_again(tmp_path):
    proc = sweep(tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    root = tmp_path / "runs" / "tiny_sweep"
    assert sorted(p.name for p in root.iterdir()) == sorted(RUNS + WARM)
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


def test_a_bad_cell_exits_2_before_any_run_starts(tmp_path):
    proc = sweep(tmp_path, TINY_SWEEP.replace("seed: [0, 1]", "model.pos: [rope, alibi]"))
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert err.startswith("emergent: error: sweep cell ") and "alibi" in err and "model.pos" in err, err
    assert not (tmp_path / "runs").exists()


def test_a_failed_run_is_recorded_the_others_go_on_and_the_sweep_exits_1(tmp_path):
    # a warm start that passes validation (the file exists) but is not a checkpoint: the
    # self-improvement runs fail when they load it, the supervised runs finish
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    text = TINY_SWEEP.replace("warm_start: {train.steps: 4}", "").replace("seed: [0, 1]", "seed: [0]").replace(
        "expert_iteration: {improve: {", f"expert_iteration: {{improve: {{init_from: '{bad}', ")
    proc = sweep(tmp_path, text)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    root = tmp_path / "runs" / "tiny_sweep"
    assert "checkpoint" in (root / "expert_iteration_seed0" / "failed.txt").read_text()
    assert "run expert_iteration_seed0 failed" in proc.stdout and "1 of 2 runs failed" in proc.stdout
    assert (root / "supervised_seed0" / "done.json").is_file()
