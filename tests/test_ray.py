"""runtime=ray: a tiny run on a 2-CPU local Ray, a worker killed mid-run, job submission."""
import os
import signal
import threading
import time

import pytest

from conftest import SMALL as TINY_SELF, TINY, scalars as read_scalars
from emergent import tags
from emergent.platform.config import load_config

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow

SMALL = [*TINY_SELF, "train.method=expert_iteration", "runtime=ray"]


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def scalars(run_dir) -> dict[str, list[float]]:
    return {t: [v for _, v in series] for t, series in read_scalars(run_dir).items()}


def test_tiny_ray_run_logs_what_local_logs_and_more(local_ray, tmp_path):
    from emergent.platform.ray_runtime import train_ray

    cfg = load_config(None, [*SMALL, "train.steps=10", f"logdir={tmp_path}"])
    final, counts = train_ray(cfg, with_counts=True)
    s = scalars(cfg.run_dir)
    for tag in (tags.eval_tag("test", "exact_match"), tags.TRAIN_SAMPLE_ACCURACY, tags.COMPUTE_TOTAL_FLOPS,
                tags.REWARD_LOSS, tags.PERF_TRACES_PER_S, tags.PERF_WORKER_UTILISATION, tags.PERF_WEIGHT_SYNC_S,
                tags.PERF_STALENESS, tags.PERF_LEARNER_BUSY, tags.PERF_DATA_WAIT_S):
        assert tag in s, tag
    assert max(s["perf/staleness"]) <= cfg.ray.max_staleness
    assert 0 < s["perf/worker_utilisation"][-1] <= 1.0 and s["perf/traces_per_s"][-1] > 0
    assert 0 < s["perf/learner_busy"][-1] <= 1.0 and min(s["perf/data_wait_s"]) >= 0
    assert counts["step"] == 10 and len(set(counts["batches"])) == 10 and "eval/test/exact_match" in final
    assert (cfg.run_dir / "last.pt").exists()


def test_a_killed_trace_worker_is_restarted_and_nothing_counts_twice(local_ray, tmp_path):
    import psutil

    from emergent.platform.ray_runtime import train_ray

    steps = 40
    cfg = load_config(None, [*SMALL, f"train.steps={steps}", "eval.every=1000", f"logdir={tmp_path}"])
    killed = []

    def kill_one():  # SIGKILL a trace worker's process once the run is under way
        deadline = time.time() + 120
        while time.time() < deadline and not killed:
            # Ray titles an actor's process "ray::TraceWorker..."
            alive = [p for p in psutil.process_iter(["cmdline"]) if "ray::TraceWorker" in " ".join(p.info["cmdline"] or [])]
            if len(alive) == cfg.ray.workers:
                time.sleep(0.5)  # let it write a batch or two (on a fast machine the run lasts ~4 s)
                try:
                    os.kill(alive[0].pid, signal.SIGKILL)
                    killed.append(alive[0].pid)
                except ProcessLookupError:  # it was replaced meanwhile: look again
                    pass
            time.sleep(0.1)

    t = threading.Thread(target=kill_one, daemon=True)
    t.start()
    final, counts = train_ray(cfg, with_counts=True)
    t.join(timeout=1)
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


def test_supervised_under_ray_computes_exactly_what_local_computes(local_ray, tmp_path):
    from emergent.platform.local import train_local
    from emergent.platform.ray_runtime import train_ray

    base = [*TINY, "train.steps=10", "ray.workers=1", f"logdir={tmp_path}"]
    train_local(load_config(None, [*base, "run_name=local"]))
    train_ray(load_config(None, [*base, "run_name=ray", "runtime=ray"]))
    local, remote = scalars(tmp_path / "quickstart" / "local"), scalars(tmp_path / "quickstart" / "ray")
    for tag in ("train/loss", "eval/test/exact_match", "eval/test/token_accuracy", "compute/total_flops"):
        assert remote[tag] == local[tag], tag
