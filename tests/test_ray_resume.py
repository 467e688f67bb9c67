"""A runtime=ray run killed whole (driver, local Ray, learner actor, trace worker) and run
again with resume=true is the same run: the README's "resubmit with resume=true".

Its own module, so no in-process Ray (test_ray.py's fixture) runs beside the runs' own.
"""
import subprocess
import sys

import pytest

from conftest import ROOT, TINY, cli_env, kill_tree, run_cli, scalars, wait_until
from emergent import tags
from emergent.platform.checkpoint import load_checkpoint
from emergent.platform.faults import HELD, HOLD_ENV

pytestmark = pytest.mark.slow


def test_a_killed_ray_run_resumed_with_resume_true_is_the_run_that_was_never_killed(tmp_path):
    home = tmp_path / "home"  # no Ray state from elsewhere
    home.mkdir()
    env = {**cli_env(), "HOME": str(home), "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    # supervised computes under Ray exactly what it computes locally (its batches are gold traces
    # of the problems the learner hands out, in order); two workers keep two batches in flight
    args = [*TINY, "train.steps=12", "eval.every=4", "checkpoint_every=3", "ray.workers=2", "train.log_every=5",
            f"logdir={tmp_path}"]
    whole = run_cli("train", *args, "run_name=whole", env=env)
    assert whole.returncode == 0, whole.stderr[-3000:]
    # the learner actor holds after its step-6 checkpoint; then the whole job is SIGKILLed
    cmd = [sys.executable, "-m", "emergent", "train", *args, "run_name=killed", "runtime=ray"]
    run_dir = tmp_path / "quickstart" / "killed"
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**env, HOLD_ENV: "killed:6"}, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until((run_dir / HELD).exists, proc)
    finally:
        kill_tree(proc)
    assert int(load_checkpoint(run_dir / "last.pt")["step"]) == 6
    resumed = run_cli("train", *args, "run_name=killed", "runtime=ray", "resume=true", env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert int(load_checkpoint(run_dir / "last.pt")["step"]) == 12
    a, b = scalars(run_dir), scalars(tmp_path / "quickstart" / "whole")
    for tag in (tags.TRAIN_LOSS, tags.eval_tag("test", "exact_match"), tags.eval_tag("test", "token_accuracy"),
                tags.COMPUTE_TOTAL_FLOPS):
        assert a[tag] == b[tag], tag  # the same values, each step once
