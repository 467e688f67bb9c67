"""The README's main command, `emergent train`, learns on more than one seed.

Seed 0 runs the whole command (1,800 steps); seed 1 runs the same command, the same
schedule, as far as its step-1200 checkpoint (EMERGENT_HOLD holds it there), where it
is killed: the two thirds of a second run that decide whether a seed learns. The two run
side by side, one thread each (about 1.5 minutes on 2 cores). Seed 0 keeps its priority;
seed 1 runs at nice 10, below the Ray tests (conftest), which mostly wait on process
starts and would otherwise queue behind it. The bars sit under what ten seeds gave
(configs/quickstart.yaml, 2026-12-07): at step 1800, 1.0 everywhere for nine seeds and
0.963 for one that missed a held-out 1-digit fact (0.1 of its difficulty's score: a
machine may miss one); at step 1200, 0.897 or more overall and 0.69 or more on every
difficulty for all ten (seed 1: 1.000), where a seed that did not learn (lr 3e-3 gave
0.29 and 0.40 at step 1800 on two seeds) sits far below.
"""

import os
import subprocess
import sys

import pytest
from conftest import ROOT, cli_env, kill_tree, scalars, wait_until

from emergent import tags
from emergent.platform.faults import HELD, HOLD_ENV

FULL, HALF = 0, 1  # seeds: the whole README command, and its first two thirds
HALF_STEP = 1200


def run_dir(root, seed):
    return root / "quickstart" / f"supervised_L2_d128_learned_s{seed}"


def final_evals(run) -> dict[str, tuple[int, float]]:
    return {t: series[-1] for t, series in scalars(run).items() if t.startswith("eval/test/")}


@pytest.mark.slow
@pytest.mark.xdist_group("quickstart")  # two processes of its own: on one xdist worker, alone
def test_quickstart_learns_3_digit_addition_on_two_seeds(tmp_path):
    env = {**cli_env(), "OMP_NUM_THREADS": "1"}
    half_env = {**env, HOLD_ENV: f"{run_dir(tmp_path, HALF).name}:{HALF_STEP}"}
    logs = {s: tmp_path / f"seed{s}.log" for s in (FULL, HALF)}
    procs = {}
    for s in (FULL, HALF):
        with logs[s].open("w") as out:
            procs[s] = subprocess.Popen(
                [sys.executable, "-m", "emergent", "train", f"seed={s}", f"logdir={tmp_path}", "progress=false"],
                cwd=ROOT,
                env=half_env if s == HALF else env,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=(lambda: os.nice(10)) if s == HALF else None,
            )
    try:  # the second run, killed once it holds after its step-1200 checkpoint
        wait_until(lambda: (run_dir(tmp_path, HALF) / HELD).is_file(), procs[HALF], timeout=900, log=logs[HALF])
    finally:
        kill_tree(procs[HALF])
    assert procs[FULL].wait(timeout=900) == 0, logs[FULL].read_text()[-2000:]
    cases = {FULL: (1800, 0.95, 0.88), HALF: (HALF_STEP, 0.85, 0.6)}  # step, overall bar, per-difficulty bar
    for s, (at, overall_bar, difficulty_bar) in cases.items():
        final = final_evals(run_dir(tmp_path, s))
        step, overall = final[tags.eval_tag("test", "exact_match")]
        assert step == at and overall >= overall_bar, (s, step, overall)
        for d in (1, 2, 3):
            assert final[tags.eval_tag("test", "exact_match", d)][1] >= difficulty_bar, (s, d, final)
