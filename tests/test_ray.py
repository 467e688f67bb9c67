"""runtime=ray: a tiny run on a 2-CPU local Ray, a worker killed mid-run, job submission."""

import os
import shutil
import signal
import threading
import time

import pytest
import ray
import torch
from conftest import SEARCH, TINY, wait_until
from conftest import SMALL as TINY_SELF
from conftest import scalars as read_scalars

from emergent import tags
from emergent.platform.checkpoint import load_checkpoint
from emergent.platform.config import load_config
from emergent.platform.faults import HELD, HOLD_ENV

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]  # one Ray at a time: see conftest

SMALL = [*TINY_SELF, "train.method=expert_iteration", "runtime=ray"]


KILLED = "worker_killed"  # the run whose trace worker is killed: its learner holds at step 5
COPIED = "copied"  # the run whose directory is copied while its learner holds after step 6
REPLICA = "replica_lost"  # the two-learner run whose rank-1 learner is killed while rank 0 holds at step 4


@pytest.fixture(scope="module")
def local_ray():
    # Ray's processes inherit this environment: the learner actor of the run named KILLED
    # holds after its step-5 checkpoint until the test has killed a worker (EMERGENT_HOLD)
    before = os.environ.get(HOLD_ENV)
    os.environ[HOLD_ENV] = f"{KILLED}:5,{COPIED}:6,{REPLICA}:4"
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    finally:
        os.environ.pop(HOLD_ENV) if before is None else os.environ.__setitem__(HOLD_ENV, before)
    yield
    ray.shutdown()


def scalars(run_dir) -> dict[str, list[float]]:
    return {t: [v for _, v in series] for t, series in read_scalars(run_dir).items()}


def test_a_ray_run_logs_what_local_logs_and_more_and_a_killed_trace_worker_counts_nothing_twice(local_ray, tmp_path):
    import psutil

    from emergent.platform.ray_runtime import train_ray

    steps = 20
    cfg = load_config(
        None,
        [
            *SMALL,
            f"train.steps={steps}",
            "eval.every=1000",
            "checkpoint_every=5",
            f"logdir={tmp_path}",
            f"run_name={KILLED}",
        ],
    )
    killed = []

    def kill_one():  # SIGKILL a trace worker's process while the learner holds at step 5, then release it
        held = cfg.run_dir / HELD
        wait_until(held.exists)
        try:  # Ray titles an actor's process "ray::TraceWorker..."
            alive = [
                p for p in psutil.process_iter(["cmdline"]) if "ray::TraceWorker" in " ".join(p.info["cmdline"] or [])
            ]
            assert len(alive) == cfg.ray.workers, alive
            os.kill(alive[0].pid, signal.SIGKILL)
            killed.append(alive[0].pid)
        finally:
            held.unlink()  # the run goes on (a failed kill fails the test below, never hangs it)

    t = threading.Thread(target=kill_one, daemon=True)
    t.start()
    final, counts = train_ray(cfg, with_counts=True)
    t.join()
    assert killed, "no worker was killed"
    # every consumed batch once; the replay and the ledger hold exactly what was consumed
    assert counts["step"] == steps and len(counts["batches"]) == len(set(counts["batches"])) == steps
    assert counts["traces"] == steps * cfg.improve.problems_per_iter * cfg.improve.samples
    assert counts["labelled"] == min(counts["labelled_added"], cfg.reward.replay_size)
    # collecting is all the generate part holds; the reward part adds the reward net's updates
    assert counts["ledger"][tags.GENERATE] == pytest.approx(counts["batch_flops"][tags.GENERATE])
    assert counts["batch_flops"][tags.GENERATE] > 0
    assert counts["ledger"][tags.REWARD] > counts["batch_flops"][tags.REWARD]
    assert not set(counts["discarded"]) & set(counts["batches"])
    # the tags a local run logs, and the runtime's own
    s = scalars(cfg.run_dir)
    for tag in (
        tags.eval_tag("test", "exact_match"),
        tags.TRAIN_SAMPLE_ACCURACY,
        tags.COMPUTE_TOTAL_FLOPS,
        tags.REWARD_LOSS,
        tags.PERF_TRACES_PER_S,
        tags.PERF_WORKER_UTILISATION,
        tags.PERF_WEIGHT_SYNC_S,
        tags.PERF_STALENESS,
        tags.PERF_LEARNER_BUSY,
        tags.PERF_DATA_WAIT_S,
    ):
        assert tag in s, tag
    assert max(s["perf/staleness"]) <= cfg.ray.max_staleness
    assert 0 < s["perf/worker_utilisation"][-1] <= 1.0 and s["perf/traces_per_s"][-1] > 0
    assert 0 < s["perf/learner_busy"][-1] <= 1.0 and min(s["perf/data_wait_s"]) >= 0
    assert "eval/test/exact_match" in final and (cfg.run_dir / "last.pt").exists()


# policy gradient collects and learns through the same SelfImprover streams as expert iteration
@pytest.mark.parametrize("method", ["expert_iteration", "alphazero"])
def test_self_improvement_under_ray_with_one_synchronous_worker_computes_exactly_what_local_computes(
    local_ray, tmp_path, method
):
    # one trace worker (collect's draws on stream 0, as local), no batch in flight beyond the
    # one being learned (ray.max_staleness=0): the same draws, weights and updates as local
    from emergent.platform.local import train_local
    from emergent.platform.ray_runtime import train_ray

    own = {"alphazero": [*SEARCH, "improve.problems_per_iter=6"]}.get(method, ["improve.samples=3"])
    shared = [a for a in TINY_SELF if not a.startswith(("improve.samples", "improve.problems_per_iter"))]
    base = [
        *shared,
        *own,
        f"train.method={method}",
        "train.steps=4",
        "eval.every=2",
        "ray.workers=1",
        "ray.max_staleness=0",
        f"logdir={tmp_path}",
    ]
    torch.set_num_threads(1)  # as the learner actor and the worker compute (a thread count changes reductions)
    train_local(load_config(None, [*base, "run_name=local"]))
    train_ray(load_config(None, [*base, "run_name=ray", "runtime=ray"]))
    local = read_scalars(tmp_path / "quickstart" / "local", perf=False)
    remote = read_scalars(tmp_path / "quickstart" / "ray", perf=False)
    assert set(remote) == set(local) and len(local) > 20
    for tag in local:
        assert remote[tag] == local[tag], tag


def test_a_data_parallel_group_whose_rank_1_learner_is_killed_resumes_from_rank_0s_checkpoint_counting_each_step_once(
    local_ray, tmp_path, capsys
):
    # ray.learners=2: while rank 0 holds after its step-4 checkpoint, rank 1's process is
    # SIGKILLed. Rank 0 learns of it only as an error in its collective; the run must read
    # that as the group's loss (not as rank 0's own error, which would end the run), wait
    # until no rank of that life can still write, and resume a new group from step 4. Each
    # step's FLOPs are logged once, as a one-learner local run counts them (the whole batch).
    import psutil

    from emergent.platform.local import train_local
    from emergent.platform.ray_runtime import train_ray

    base = [*TINY, "train.steps=8", "eval.every=4", "checkpoint_every=2", "train.log_every=1", f"logdir={tmp_path}"]
    cfg = load_config(None, [*base, f"run_name={REPLICA}", "runtime=ray", "ray.learners=2", "ray.workers=1"])
    killed, running = [], threading.Event()
    running.set()

    def kill_rank_1_then_release():  # every hold is released (the new life's rank 0 holds once too)
        held = cfg.run_dir / HELD
        while running.is_set():
            if held.exists():
                if not killed:
                    killed.extend(
                        p.pid
                        for p in psutil.process_iter(["cmdline"])
                        if "ray::LearnerReplica" in " ".join(p.info["cmdline"] or [])
                    )
                    for pid in killed:
                        os.kill(pid, signal.SIGKILL)
                held.unlink()
            time.sleep(0.02)

    t = threading.Thread(target=kill_rank_1_then_release, daemon=True)
    t.start()
    try:
        final = train_ray(cfg)
    finally:
        running.clear()
        t.join()
    out = capsys.readouterr()
    assert len(killed) == 1, killed
    assert "the learner actor was lost" in out.err + out.out and "(1 of 3 restarts)" in out.err + out.out
    assert final["step"] == 8
    train_local(load_config(None, [*base, "run_name=local"]))
    got = read_scalars(cfg.run_dir, perf=False)
    want = read_scalars(tmp_path / "quickstart" / "local", perf=False)
    assert got[tags.COMPUTE_TOTAL_FLOPS] == want[tags.COMPUTE_TOTAL_FLOPS]  # steps 1..8, each once
    assert [s for s, _ in got[tags.eval_tag("test", "exact_match")]] == [0, 4, 8]


def test_a_learner_group_wanting_more_gpus_than_the_cluster_has_is_a_one_line_error(local_ray, tmp_path):
    from emergent.platform.errors import UserError
    from emergent.platform.ray_runtime import train_ray

    cfg = load_config(None, [*TINY, "runtime=ray", "ray.learners=2", "ray.learner_gpus=1", f"logdir={tmp_path}"])
    with pytest.raises(UserError, match=r"ray.learners=2 learners of 1.* GPU each need 2 GPUs; the Ray cluster has 0"):
        train_ray(cfg)
    assert not (cfg.run_dir / "last.pt").exists()


def test_a_ray_run_resumed_from_what_a_kill_leaves_is_the_run_that_was_never_killed_and_local_computes_it_too(
    local_ray, tmp_path
):
    # While the learner holds right after its step-6 checkpoint, the run directory is exactly
    # what a SIGKILL of the whole job there would leave (events flushed, checkpoint whole,
    # nothing later written): it is copied, and the original goes on to be the uninterrupted
    # reference. The copy, resumed under Ray with resume=true, must log the same values, each
    # step once. Two workers keep batches in flight at the checkpoint (their problems must
    # be drawn again), and the window of log_every=5 spans it. Supervised computes under Ray
    # what it computes locally whatever the staleness (its batches are gold traces): the
    # same run in one local process is the reference's twin.
    from emergent.platform.local import train_local
    from emergent.platform.ray_runtime import train_ray

    base = [
        *TINY,
        "train.steps=12",
        "eval.every=4",
        "checkpoint_every=3",
        "ray.workers=2",
        "train.log_every=5",
        f"logdir={tmp_path}",
    ]
    cfg = load_config(None, [*base, f"run_name={COPIED}", "runtime=ray"])
    snapshot, whole = tmp_path / "snapshot", tmp_path / "whole"

    running = threading.Event()
    running.set()

    def copy_then_release():  # the first hold is copied; every hold is released (a resumed run holds once too)
        held = cfg.run_dir / HELD
        while running.is_set():
            if held.exists():
                if not snapshot.exists():
                    shutil.copytree(cfg.run_dir, snapshot, ignore=shutil.ignore_patterns(HELD))
                held.unlink()
            time.sleep(0.02)

    t = threading.Thread(target=copy_then_release, daemon=True)
    t.start()
    try:
        train_ray(cfg)
        cfg.run_dir.rename(whole)  # the uninterrupted run, kept as the reference
        snapshot.rename(cfg.run_dir)  # the run as the kill left it, where it ran
        assert load_checkpoint(cfg.run_dir / "last.pt")["step"] == 6
        final = train_ray(load_config(None, [*base, f"run_name={COPIED}", "runtime=ray", "resume=true"]))
    finally:
        running.clear()
        t.join()
    assert final["step"] == 12
    reference, resumed = read_scalars(whole, perf=False), read_scalars(cfg.run_dir, perf=False)
    assert set(resumed) == set(reference)
    for tag in reference:
        assert resumed[tag] == reference[tag], tag
    train_local(load_config(None, [*base, "run_name=local"]))
    local = read_scalars(tmp_path / "quickstart" / "local", perf=False)
    assert set(local) == set(reference) - {t for t in reference if t.startswith("ray/")}
    for tag in local:
        assert local[tag] == reference[tag], tag
