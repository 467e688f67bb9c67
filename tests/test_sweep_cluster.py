"""Runs on a Ray cluster of several nodes (``ray.cluster_utils.Cluster``: raylets on this
machine) survive the loss of a node. A sweep: the run on the lost node is run again on
another and resumes from its checkpoint, the sweep command ends normally, and nothing
counts twice. A ``runtime=ray`` run: a lost learner is started again elsewhere and the run
resumes from its checkpoint.

Its own module: the cluster lives in this process, and no other Ray may run beside it.
"""

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY, cli_env, descendants, kill_tree, scalars, wait_until

from emergent import tags
from emergent.platform.cli import main
from emergent.platform.config import load_config
from emergent.platform.faults import HELD, HOLD_ENV

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]  # one Ray at a time: see conftest

SWEEP = """
experiment: lost_node
base:
  model: {n_layer: 1, n_head: 2, d_model: 32, max_len: 24}
  task: {difficulty: [1, 2], extrapolate: [3, 3]}
  eval: {problems: 12, every: 3, batch_size: 64, splits: [test]}
  train: {steps: 6, log_every: 1, batch_size: 16}
  optim: {warmup_steps: 2}
  checkpoint_every: 1
grid:
  seed: [0, 1, 2, 3]
resources: {cpus: 1}
"""
RUNS = [f"seed{s}" for s in range(4)]
# the cluster marks a silent node dead after 3 missed half-second health checks (Ray's
# default waits about 15 s; what the runs do then is the same)
FAST_HEALTH_CHECKS = {"health_check_period_ms": 500, "health_check_failure_threshold": 3}


def ancestors(pid: int) -> list[int]:
    out = []
    while pid > 1:
        pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        out.append(pid)
    return out


RAY_CLI = str(Path(sys.executable).with_name("ray"))


def cluster_setup(monkeypatch) -> None:
    """What every test here does before its cluster starts: no usage stats, and Ray 2.60's
    token in this home (made if missing, as the README's recipe does; CI's home is empty)."""
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    subprocess.run([RAY_CLI, "get-auth-token", "--generate"], check=True, capture_output=True, timeout=120)


def lose(cluster, node) -> None:
    """The node's machine is gone: every process of it at once, SIGKILL. (Killing its raylet
    alone, as ``remove_node`` does, leaves its worker processes running for a while: a run
    there could finish as if nothing had happened.)"""
    for pid in descendants(node.all_processes["raylet"][0].process.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    cluster.remove_node(node, allow_graceful=False)


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads the process tree from /proc")
def test_a_sweep_survives_the_loss_of_a_node_and_counts_nothing_twice(tmp_path, monkeypatch):
    from ray.cluster_utils import Cluster

    from emergent.platform.local import train_local
    from emergent.platform.sweep import load_sweep

    cluster_setup(monkeypatch)
    # every run holds after its step-2 checkpoint (the cluster's workers inherit this): the
    # first two, one on each node, are held there when the worker node is killed
    monkeypatch.setenv(HOLD_ENV, ",".join(f"{n}:2" for n in RUNS))
    path = tmp_path / "sweep.yaml"
    path.write_text(SWEEP)
    root = tmp_path / "runs" / "lost_node"
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "include_dashboard": False, "_system_config": FAST_HEALTH_CHECKS},
    )
    worker = cluster.add_node(num_cpus=1)
    proc = None
    try:
        cluster.wait_for_nodes()
        env = {**cli_env(), "RAY_ADDRESS": cluster.address}
        proc = subprocess.Popen(
            [sys.executable, "-m", "emergent", "sweep", str(path), f"logdir={tmp_path / 'runs'}"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

        def held():
            return {n: int((root / n / HELD).read_text().split()[1]) for n in RUNS if (root / n / HELD).is_file()}

        wait_until(lambda: len(held()) == 2, proc)
        raylet = worker.all_processes["raylet"][0].process.pid
        lost = [n for n, pid in held().items() if raylet in ancestors(pid)]
        assert len(lost) == 1, (held(), raylet)
        lose(cluster, worker)  # the node and the run on it are gone
        # from now on every hold is released as it appears (a retried run holds again once)
        while proc.poll() is None:
            for n in held():
                (root / n / HELD).unlink(missing_ok=True)
            time.sleep(0.02)
        out = proc.stdout.read()
        assert proc.returncode == 0, out[-3000:]
        assert "all 4 runs finished" in out
    finally:
        if proc is not None and proc.poll() is None:
            kill_tree(proc)
        cluster.shutdown()
    assert all((root / n / "done.json").is_file() for n in RUNS)
    # the lost run, resumed elsewhere from its step-2 checkpoint, logged what a run that was
    # never interrupted logs: each step's scalars once, the same FLOPs
    monkeypatch.delenv(HOLD_ENV)
    _, configs = load_sweep(path, [f"logdir={tmp_path / 'reference'}"])
    torch.set_num_threads(1)  # as the sweep's runs (one CPU each)
    train_local(configs[lost[0]])
    got, want = scalars(root / lost[0], perf=False), scalars(configs[lost[0]].run_dir, perf=False)
    assert [s for s, _ in got[tags.COMPUTE_TOTAL_FLOPS]] == [1, 2, 3, 4, 5, 6]
    assert got == want
    assert main(["report", str(root)]) == 0  # the entry point, in this process (no second torch import)
    assert "All 4 runs finished." in (root / "report.md").read_text()


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads the process tree from /proc")
def test_a_ray_run_whose_learner_node_dies_resumes_elsewhere_and_counts_nothing_twice(tmp_path, monkeypatch):
    # `emergent train runtime=ray` on a cluster whose head has no CPU: the learner and its
    # trace worker sit on one of two worker nodes. That node is killed while the learner
    # holds after its step-2 checkpoint; the run starts a new learner on the other node,
    # resumes from that checkpoint and logs what the run computes in one local process
    # (supervised computes the same under Ray whatever the staleness), each step once.
    from ray.cluster_utils import Cluster

    from emergent.platform.local import train_local

    cluster_setup(monkeypatch)
    monkeypatch.setenv(HOLD_ENV, "lost:2")  # the cluster's workers inherit it
    args = [
        *TINY,
        "eval.every=3",
        "eval.splits=[test]",
        "train.steps=6",
        "train.log_every=1",
        "checkpoint_every=1",
        f"logdir={tmp_path / 'runs'}",
        "run_name=lost",
    ]
    on_ray = ["runtime=ray", "ray.workers=1", "ray.worker_cpus=0.5", "ray.learner_cpus=0.5"]
    run_dir = tmp_path / "runs" / "quickstart" / "lost"
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "include_dashboard": False, "_system_config": FAST_HEALTH_CHECKS},
    )
    nodes = [cluster.add_node(num_cpus=1) for _ in range(2)]
    proc = None
    log = tmp_path / "train.log"
    try:
        cluster.wait_for_nodes()
        with log.open("w") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "emergent", "train", *args, *on_ray],
                cwd=ROOT,
                env={**cli_env(), "RAY_ADDRESS": cluster.address},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        held = run_dir / HELD
        wait_until(held.is_file, proc, log=log)
        learner = int(held.read_text().split()[1])
        node = next(n for n in nodes if n.all_processes["raylet"][0].process.pid in ancestors(learner))
        lose(cluster, node)  # the learner and the process that wrote its checkpoint are gone
        while proc.poll() is None:  # the new learner holds once too: let it go
            held.unlink(missing_ok=True)
            time.sleep(0.02)
        out = log.read_text()
        assert proc.returncode == 0, out[-3000:]
        assert "the learner actor was lost" in out and "resuming the run from its last checkpoint" in out, out[-3000:]
    finally:
        if proc is not None and proc.poll() is None:
            kill_tree(proc)
        cluster.shutdown()
    monkeypatch.delenv(HOLD_ENV)
    torch.set_num_threads(1)  # as the learner computes (learner_cpus below one: one thread)
    cfg = load_config(None, [*args, f"logdir={tmp_path / 'reference'}"])
    train_local(cfg)
    got, want = scalars(run_dir, perf=False), scalars(cfg.run_dir, perf=False)
    assert [s for s, _ in got[tags.COMPUTE_TOTAL_FLOPS]] == [1, 2, 3, 4, 5, 6]
    assert {t: v for t, v in got.items() if not t.startswith("ray/")} == want


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the second node's processes by their working directory")
def test_a_node_that_cannot_see_logdir_stops_a_run_and_a_sweep_before_they_start(tmp_path, monkeypatch):
    # two nodes on one machine, started in different working directories: a relative logdir
    # is a different directory on each, as a path on a node's own disk would be
    from ray.cluster_utils import Cluster

    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    here.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(here)  # the head node and the driver
    cluster_setup(monkeypatch)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        subprocess.run(
            [RAY_CLI, "start", f"--address={cluster.address}", "--num-cpus=1"],
            cwd=elsewhere,
            check=True,
            capture_output=True,
            timeout=120,
        )
        env = {**cli_env(), "RAY_ADDRESS": cluster.address}
        (here / "sweep.yaml").write_text(SWEEP)
        for cmd in (
            ["train", *TINY, "train.steps=2", "runtime=ray", "logdir=runs"],
            ["sweep", "sweep.yaml", "logdir=runs"],
        ):
            proc = subprocess.run(
                [sys.executable, "-m", "emergent", *cmd], cwd=here, env=env, capture_output=True, text=True, timeout=300
            )
            err = proc.stderr.strip().splitlines()
            assert proc.returncode == 2 and err, (cmd, proc.stdout[-2000:], proc.stderr[-2000:])
            line = err[-1]
            assert line.startswith("emergent: error: logdir runs is not storage every node sees: node "), line
            assert f"cannot read {elsewhere / 'runs'}" in line, line  # the path as that node sees it
            assert not list((here / "runs").rglob("*.pt")) and not (elsewhere / "runs").exists()
    finally:
        for proc_dir in Path("/proc").glob("[0-9]*"):  # the second node: every process started in its directory
            with contextlib.suppress(OSError):
                if os.readlink(proc_dir / "cwd") == str(elsewhere):
                    os.kill(int(proc_dir.name), signal.SIGKILL)
        cluster.shutdown()
