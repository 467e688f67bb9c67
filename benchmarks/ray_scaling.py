"""Trace throughput of Ray trace workers (1, 2, ... workers), weight-sync time per version,
and learner throughput of a data-parallel learner group (``ray.learners``).

    python benchmarks/ray_scaling.py [--workers 1 2] [--batches 12] [--learner-steps 12] [key=value ...]

Each worker runs the method's ``collect`` (the same code the Ray runtime runs) on batches
of ``improve.problems_per_iter`` problems; all batches are submitted at once, so the
figure is the workers' throughput with no learner in the way. Weight sync is what the
runtime pays per version: the learner's export to numpy, one object-store put, and a
worker's load into its modules, set beside one iteration (collect + learn) of the local
runtime on the same config.

The learner axis: tokens/s of supervised updates (batch ``--learner-batch`` on the same
model) for 1 learner with 1 thread, 2 learners with 1 thread each (a gloo group, each
taking half of every batch's rows), and 1 learner with 2 threads, side by side in one
run. The learners are the runtime's own actor classes, handed the same batches; the time
is their consumes alone (no trace workers, no evaluation).
"""

from __future__ import annotations

import argparse
import os
import time

import ray
import torch

from emergent.agents.token_batch import encode_batch
from emergent.envs import TOKENIZER
from emergent.platform.config import load_config
from emergent.platform.experiment import Experiment
from emergent.platform.ray_runtime import LearnerActor, LearnerReplica, TraceWorker, load_numpy, to_numpy

DEFAULT = [
    "train.method=expert_iteration",
    "task.name=addition",
    "task.difficulty=[1,3]",
    "device=cpu",
    "improve.problems_per_iter=32",
    "improve.samples=8",
    "progress=false",
    "logdir=/tmp/ray_scaling",
]


def throughput(cfg, n_workers: int, batches: int) -> float:
    Worker = ray.remote(TraceWorker).options(num_cpus=1)
    workers = [Worker.remote(cfg, i, threads=1) for i in range(n_workers)]
    ray.get([w.pid.remote() for w in workers])
    experiment = Experiment(cfg)
    weights = ray.put(
        {"version": 0, **{name: to_numpy(m.state_dict()) for name, m in experiment.method.networks().items()}}
    )
    problems = [experiment.next_problems() for _ in range(batches + n_workers)]
    # warm-up: one batch per worker (first weight load, allocator)
    ray.get([w.collect.remote(weights, problems[i], i, 0) for i, w in enumerate(workers)])
    t0 = time.perf_counter()
    refs = [workers[i % n_workers].collect.remote(weights, problems[n_workers + i], i, 0) for i in range(batches)]
    traces = sum(collected.experience.size for collected, _ in ray.get(refs))
    seconds = time.perf_counter() - t0
    for w in workers:
        ray.kill(w)
    return traces / seconds


def learner_throughput(cfg, learners: int, threads: int, steps: int) -> float:
    """Tokens/s of ``steps`` updates by a group of ``learners`` learner actors, ``threads``
    each (after two warm-up updates)."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_object(
        OmegaConf.merge(
            OmegaConf.structured(cfg),
            {
                "runtime": "ray",
                "ray": {"learners": learners, "learner_cpus": threads},
                "run_name": f"learners{learners}_threads{threads}",
            },
        )
    )
    ranks = [ray.remote(LearnerActor).options(num_cpus=threads).remote(cfg)]
    ranks += [ray.remote(LearnerReplica).options(num_cpus=threads).remote(cfg, r) for r in range(1, learners)]
    if learners > 1:
        address = ray.get(ranks[0].group_address.remote())
        ray.get([r.join_group.remote(address, learners) for r in ranks])
    experiment = Experiment(cfg)
    batches = [ray.put(experiment.collect(experiment.next_problems())) for _ in range(steps + 2)]

    def consume(i: int) -> list:
        info = {"batch_id": i, "busy_s": 0.0, "sync_s": 0.0}
        return [ranks[0].consume.remote(batches[i], info), *[r.consume.remote(batches[i]) for r in ranks[1:]]]

    ray.get([ref for i in range(2) for ref in consume(i)])
    t0 = time.perf_counter()
    ray.get([ref for i in range(2, steps + 2) for ref in consume(i)])
    seconds = time.perf_counter() - t0
    for r in ranks:
        ray.kill(r)
    tokens = sum(
        encode_batch(TOKENIZER, e.prompts, e.completions, cfg.model.max_len).tokens  # what each update trains
        for e in (c.experience for c in ray.get(batches[2:]))
    )
    return tokens / seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batches", type=int, default=12)
    ap.add_argument("--learner-steps", type=int, default=12)
    ap.add_argument("--learner-batch", type=int, default=64)
    ap.add_argument(
        "--learner-model",
        default="model.n_layer=4 model.d_model=256 model.n_head=4",
        help="the learner axis's model keys",
    )
    args, overrides = ap.parse_known_args()
    cfg = load_config(None, [*DEFAULT, *overrides])
    ray.init(num_cpus=max(max(args.workers), os.cpu_count() or 1), include_dashboard=False, log_to_driver=False)
    print(
        f"cores {os.cpu_count()}, {cfg.task.name} {cfg.train.method}, {cfg.improve.problems_per_iter} problems x "
        f"{cfg.improve.samples} samples per batch, model L{cfg.model.n_layer} d{cfg.model.d_model}"
    )
    rates = {n: throughput(cfg, n, args.batches) for n in args.workers}
    base = rates[args.workers[0]]
    for n, r in rates.items():
        print(f"workers={n}: {r:8.1f} traces/s  (x{r / base:.2f} vs {args.workers[0]} worker)")

    # weight sync per version vs one local iteration (collect + learn) on the same config,
    # computed with the threads a local run uses
    threads = torch.get_num_threads()
    learner = LearnerActor(cfg, driver_threads=threads)
    torch.set_num_threads(threads)  # the actor class set its own: time what a local run computes
    worker = TraceWorker(cfg, 0, threads=threads)
    syncs = []
    for _ in range(5):
        t0 = time.perf_counter()
        ref = ray.put(learner.weights())
        w = ray.get(ref)
        for name, module in worker.experiment.method.networks().items():
            load_numpy(module, w[name])
        syncs.append(time.perf_counter() - t0)
    experiment = learner.run.experiment
    t0 = time.perf_counter()
    for _ in range(3):
        experiment.train_step()
    iteration = (time.perf_counter() - t0) / 3
    sync = sorted(syncs)[len(syncs) // 2]
    print(
        f"weight sync per version: {sync * 1e3:.2f} ms (median of 5); one local iteration: {iteration * 1e3:.0f} ms; "
        f"sync / iteration = {sync / iteration:.2%}"
    )

    # the learner axis: supervised updates on a model big enough for the update to dominate
    sup = load_config(
        None,
        [
            *[o for o in DEFAULT if not o.startswith(("train.method", "improve."))],
            *args.learner_model.split(),
            f"train.batch_size={args.learner_batch}",
            "eval.every=100000",
            "checkpoint_every=100000",
            "train.steps=100000",
            *overrides,
        ],
    )
    axis = [(1, 1), (2, 1), (1, 2)]
    rates = {(n, t): learner_throughput(sup, n, t, args.learner_steps) for n, t in axis}
    print(
        f"learner axis: supervised, batch {args.learner_batch}, model L{sup.model.n_layer} d{sup.model.d_model}, "
        f"{args.learner_steps} updates each"
    )
    for (n, t), r in rates.items():
        print(f"learners={n} x {t} thread(s): {r:10.0f} tokens/s  (x{r / rates[(1, 1)]:.2f} vs 1 learner x 1 thread)")
    ray.shutdown()


if __name__ == "__main__":
    main()
