"""``emergent sweep``: a grid validated before anything runs, run as Ray tasks, re-runnable."""

import itertools
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, cli_env, kill_tree, scalars, wait_until

from emergent import tags
from emergent.platform.checkpoint import load_checkpoint
from emergent.platform.cli import main
from emergent.platform.config import load_yaml
from emergent.platform.faults import HELD, HOLD_ENV
from emergent.platform.report import read_experiment

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]  # one Ray at a time: see conftest

TINY_SWEEP = """
experiment: tiny_sweep
base:
  model: {n_layer: 1, n_head: 2, d_model: 32, max_len: 24}
  task: {difficulty: [1, 2], extrapolate: [3, 3]}
  eval: {problems: 12, every: 2, batch_size: 64, splits: [test, extrapolate], pass_k: [1, 2]}
  train: {steps: 3, log_every: 1}
  checkpoint_every: 1
  optim: {warmup_steps: 2}
  ray: {workers: 1, worker_cpus: 0.25, dashboard: false}
grid:
  train.method: [supervised, expert_iteration]
  seed: [0, 1]
per_method:
  supervised: {train.batch_size: 16}
  expert_iteration: {runtime: ray, improve: {problems_per_iter: 6, samples: 3},
                     reward: {init: scratch, n_layer: 1, d_model: 32, n_head: 2}}
warm_start: {train.steps: 2, runtime: local}
resources: {cpus: 0.25}
"""
RUNS = [f"{m}_seed{s}" for m in ("supervised", "expert_iteration") for s in (0, 1)]
WARM = ["warm_start_seed0", "warm_start_seed1"]  # the warm_start block sets runtime: one per seed, shared


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
    return subprocess.run(
        sweep_cmd(tmp_path, text, *overrides), capture_output=True, text=True, timeout=400, cwd=ROOT, env=env(tmp_path)
    )


def report(root) -> str:
    """``emergent report``: the entry point, in this process (a child would import torch again)."""
    assert main(["report", str(root)]) == 0
    return (root / "report.md").read_text()


def runs_in(root) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir())


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads the process tree from /proc")
def test_a_tiny_sweep_killed_with_sigkill_and_run_again_skips_what_finished_records_a_failure_and_reports(tmp_path):
    # 2 methods x 2 seeds from one shared warm start per seed: supervised as local runs,
    # expert iteration as runtime=ray runs (per_method). A runtime=ray run has a learner actor
    # and a trace worker of its own: a quarter CPU for its task and learner, a quarter for its
    # worker, and Ray reserves both before the run starts (runs' tasks taking every CPU while
    # their workers wait would deadlock).
    # Two runs are held after their step-2 checkpoint (EMERGENT_HOLD: the ray run's hold is
    # in its learner actor), so the sweep is killed in a known state: 4 runs finished, those
    # two half done. No clock decides anything.
    root = tmp_path / "runs" / "tiny_sweep"
    broken, resumed = "supervised_seed1", "expert_iteration_seed0"
    held = {n: root / n / HELD for n in (broken, resumed)}
    log = tmp_path / "sweep.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            sweep_cmd(tmp_path, TINY_SWEEP),
            cwd=ROOT,
            start_new_session=True,
            env={**env(tmp_path), HOLD_ENV: f"{broken}:2,{resumed}:2"},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    done = lambda: {n for n in RUNS + WARM if (root / n / "done.json").is_file()}  # noqa: E731
    try:  # SIGKILL the whole tree once it is there
        wait_until(lambda: len(done()) == 4 and all(p.is_file() for p in held.values()), proc, timeout=400, log=log)
    finally:
        kill_tree(proc)
    finished = done()
    assert finished == set(RUNS + WARM) - set(held)
    assert all(int(load_checkpoint(root / n / "last.pt")["step"]) == 2 for n in held)
    headline = read_experiment(root)[1].headline(root)  # what `emergent report` heads its page with
    assert headline.startswith("**Partial report**: 4 of 6 runs finished, 2 started"), headline
    untouched = {p: p.stat().st_mtime_ns for n in finished for p in (root / n).rglob("*")}
    # one unfinished run's checkpoint is damaged: run again, it fails and the others go on
    (root / broken / "last.pt").write_bytes(b"not a checkpoint")

    again = sweep(tmp_path)
    assert again.returncode == 1, again.stdout[-3000:] + again.stderr[-3000:]
    assert "4 already finished (skipped)" in again.stdout
    assert {p: p.stat().st_mtime_ns for n in finished for p in (root / n).rglob("*")} == untouched  # not re-run
    assert "checkpoint" in (root / broken / "failed.txt").read_text() and f"run {broken} failed" in again.stdout
    assert "1 of 6 runs failed" in again.stdout
    assert runs_in(root) == sorted(RUNS + WARM) and done() == set(RUNS + WARM) - {broken}
    # the held run resumed from its step-2 checkpoint: each step's scalars once
    steps = [s for s, _ in scalars(root / resumed)[tags.COMPUTE_TOTAL_FLOPS]]
    assert steps == [1, 2, 3]
    for name in done():
        logged = scalars(root / name)
        assert tags.eval_tag("test", "exact_match") in logged, name
        assert (tags.PERF_WORKER_UTILISATION in logged) == name.startswith("expert_iteration"), name  # ray runs
    # the self-improvement runs started from their seed's warm start: its compute is theirs
    ei = next(n for n in sorted(done()) if n.startswith("expert_iteration"))
    warm = scalars(root / f"warm_start_seed{ei[-1]}")[tags.COMPUTE_TOTAL_FLOPS][-1][1]
    assert scalars(root / ei)[tags.compute_tag(tags.WARM_START)][-1][1] == pytest.approx(warm)

    text = report(root)
    assert text.splitlines()[2].startswith(f"The sweep ended: 5 of 6 runs finished; 1 failed ({broken}")
    rows = {line.split("|")[1].strip(): line.split("|") for line in text.splitlines() if line.startswith("| ")}
    assert rows["supervised"][3].strip() == "1" and rows["expert_iteration"][3].strip() == "2", rows
    assert rows["supervised"][9].strip() == "reference"
    # against one supervised seed (the broken run's series): a difference, no interval over
    # seeds (the paired t interval itself: tests/test_report.py)
    assert re.fullmatch(r" [+-]\d\.\d{3} \(1 seed: no interval over seeds\) ", rows["expert_iteration"][9]), rows
    assert rows["warm start"][3].strip() == "2"  # one warm start per seed, shared by both methods
    for fig in ("compute.png", "size.png", "difficulty.png", "pass_at_k.png"):
        assert f"]({fig})" in text and (root / fig).stat().st_size > 10_000, fig


def test_a_bad_cell_exits_2_before_any_run_starts(tmp_path, capsys):
    cmd = sweep_cmd(tmp_path, TINY_SWEEP.replace("seed: [0, 1]", "model.pos: [rope, alibi]"))
    assert main(cmd[3:]) == 2  # in this process: validation comes before Ray is imported
    err = capsys.readouterr().err.strip()
    assert err.startswith("emergent: error: sweep cell ") and "alibi" in err and "model.pos" in err, err
    assert not (tmp_path / "runs").exists()


BAD_SWEEPS = [  # (what is wrong, the change to TINY_SWEEP, words the one-line error must contain)
    ("an unknown top-level key", ("resources:", "retries: 3\nresources:"), ["unknown key", "retries"]),
    ("a grid value that is not a list", ("seed: [0, 1]", "seed: 0"), ["grid", "non-empty lists"]),
    ("an empty grid", ("seed: [0, 1]", "seed: []"), ["grid", "non-empty lists"]),
    (
        "per_method keys that are not a mapping",
        ("supervised: {train.batch_size: 16}", "supervised: [16]"),
        ["per_method.supervised", "mapping"],
    ),
    (
        "a key the method does not read",
        ("supervised: {train.batch_size: 16}", "supervised: {train.batch_size: 16, improve.samples: 4}"),
        ["sweep cell", "improve.samples"],
    ),
    ("no CPUs per run", ("resources: {cpus: 0.25}", "resources: {cpus: 0}"), ["resources.cpus"]),
    (
        "a learner larger than its run",
        ("worker_cpus: 0.25,", "worker_cpus: 0.25, learner_cpus: 1,"),
        ["sweep cell", "learner_cpus"],
    ),
    ("two cells with one run name", ("seed: [0, 1]", "seed: [0, 1]\n  task.data_seed: ['1', 1]"), ["share a run name"]),
    (
        "a warm_start that is not a mapping",
        ("warm_start: {train.steps: 2, runtime: local}", "warm_start: [2]"),
        ["warm_start"],
    ),
    (
        "a skip entry naming a value not in the grid",
        ("resources:", "skip: [{seed: 7}]\nresources:"),
        ["skip entry", "seed=7", "not in the grid"],
    ),
    ("a skip that is not a list of mappings", ("resources:", "skip: {seed: 0}\nresources:"), ["skip must be a list"]),
]


def test_skip_leaves_out_the_combinations_it_names_and_their_warm_starts(tmp_path):
    from emergent.platform.sweep import load_sweep

    path = tmp_path / "s.yaml"
    path.write_text(TINY_SWEEP.replace("resources:", "skip: [{train.method: expert_iteration, seed: 1}]\nresources:"))
    sweep, configs = load_sweep(path)
    assert [c.name for c in sweep.cells if c.role == "run"] == [
        "supervised_seed0",
        "supervised_seed1",
        "expert_iteration_seed0",
    ]
    assert [c.name for c in sweep.cells if c.role == "warm_start"] == ["warm_start_seed0"]
    assert set(configs) == {c.name for c in sweep.cells}


@pytest.mark.parametrize("what,change,words", BAD_SWEEPS, ids=[b[0] for b in BAD_SWEEPS])
def test_a_bad_sweep_file_exits_2_with_one_line_naming_the_problem(tmp_path, capsys, what, change, words):
    old, new = change
    assert old in TINY_SWEEP
    cmd = sweep_cmd(tmp_path, TINY_SWEEP.replace(old, new, 1))
    assert main(cmd[3:]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("emergent: error: "), err
    assert all(w in err for w in words), err
    assert not (tmp_path / "runs").exists()


def test_a_sweep_file_that_is_not_yaml_or_missing_or_names_a_missing_base_exits_2(tmp_path, capsys):
    for text, word in (
        ("grid: [unclosed", "s.yaml"),
        (None, "s.yaml"),
        ("base: configs/nope.yaml\ngrid: {seed: [0]}\n", "nope.yaml"),
    ):
        path = tmp_path / "s.yaml"
        path.unlink(missing_ok=True)
        if text is not None:
            path.write_text(text)
        assert main(["sweep", str(path)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and word in err, err


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "sweeps").glob("*.yaml")), ids=lambda p: p.name)
def test_the_committed_sweep_files_load_and_every_cell_validates(path):
    from emergent.platform.sweep import load_sweep

    sweep, configs = load_sweep(path)
    spec = load_yaml(path)
    runs = [c for c in sweep.cells if c.role == "run"]
    grid = spec["grid"]
    combos = [dict(zip(grid, v)) for v in itertools.product(*grid.values())]
    kept = [c for c in combos if not any(all(c[k] == v for k, v in x.items()) for x in spec.get("skip", []))]
    assert len(runs) == len(kept) and len(kept) <= math.prod(len(v) for v in grid.values())
    assert set(configs) == {c.name for c in sweep.cells}
    if "flop_budget" not in spec:  # not a comparison (quickstart_seeds: one method over seeds)
        assert {configs[c.name].train.method for c in runs} == {"supervised"} and "warm_start" not in spec
        return
    for cell in runs:  # every compared run ends at the sweep's budget, from its seed's warm start
        assert configs[cell.name].train.flop_budget == spec["flop_budget"]
        assert (cell.warm_start is None) == (configs[cell.name].train.method == "supervised")
