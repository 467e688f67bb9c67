"""The Ray runtime: trace workers generate and score traces, a learner actor trains.

The driver loop reads like the local one; Ray only wraps the same classes:

  TraceWorker   the method's own object (``ExpertIteration``, ...) calling only
                ``collect``: it reads weights, never updates them
  LearnerActor  a ``Run`` (Experiment + run directory): ``consume``, evaluation,
                checkpoints and TensorBoard, exactly as ``train_local`` does them

Weights travel once per version: the learner returns a CPU state dict of numpy arrays
from an actor method, so it is stored once in the object store, and every worker
receives the same reference (zero-copy reads on the same node). A worker loads a version
only when it is newer than the one it holds.

Bounded staleness: at most ``ray.max_staleness + 1`` batches are in flight, and a batch
that returns more than ``max_staleness`` versions behind the learner (a slow worker's) is
discarded: the ledger counts its FLOPs, no replay buffer sees its traces.

Faults: a trace worker that dies is restarted by Ray (``ray.max_restarts``); the batch it
was writing is dropped (its problems are simply not trained on) and the worker gets a new
one. Nothing reaches the replay buffers or the FLOP ledger except through ``consume``,
and each batch carries a unique id the learner consumes at most once.

This is the only module that imports ray.
"""
from __future__ import annotations

import os
import time
from collections import deque
from typing import Any

import numpy as np
import torch

from . import tags
from .config import Config
from .errors import UserError
from .local import Experiment, Run, log_due


def to_numpy(state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in state.items()}


def load_numpy(module: torch.nn.Module, state: dict[str, np.ndarray]) -> None:
    module.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()})


class TraceWorker:
    """Writes and judges traces with the latest published weights (a plain class; Ray wraps it)."""

    def __init__(self, cfg: Config, index: int, threads: int = 1) -> None:
        torch.set_num_threads(max(1, threads))
        cfg.improve.init_from = None  # weights come from the learner, not from disk
        self.exp = Experiment(cfg, build_data=False)
        self.exp.learner.reseed(cfg.seed, stream=index + 1)  # workers sample different traces
        self.index, self.version = index, -1

    def collect(self, weights: dict, problems: list, batch_id: int) -> tuple[Any, dict]:
        t0 = time.perf_counter()
        sync = 0.0
        if weights["version"] > self.version:
            load_numpy(self.exp.model, weights["policy"])
            load_numpy(self.exp.reward_net, weights["reward_net"])
            self.version = weights["version"]
            sync = time.perf_counter() - t0
        experience = self.exp.collect(problems)
        experience.version = self.version
        return experience, {"batch_id": batch_id, "worker": self.index, "busy_s": time.perf_counter() - t0,
                            "sync_s": sync}

    def pid(self) -> int:
        return os.getpid()


class LearnerActor:
    """A ``Run`` in an actor: the learner, its replay, evaluation, checkpoints, TensorBoard."""

    def __init__(self, cfg: Config, threads: int = 1) -> None:
        torch.set_num_threads(max(1, threads))
        self.run = Run(cfg)
        self.consumed: set[int] = set()          # batch ids learned from
        self.consumed_traces = 0
        self.labelled_added = 0                  # traces handed to the reward net's replay
        self.discarded: list[int] = []           # batch ids too stale to learn from
        self.batch_flops: dict[str, float] = {}  # what the consumed batches cost to collect
        self.export_s = 0.0

    def start(self) -> dict:
        if self.run.step == 0:
            self.run.evaluate()
        return {"step": self.run.step, "done": self.run.done}

    def next_problems(self, n: int) -> list:
        return self.run.exp.data.next(n)

    def weights(self) -> dict:
        t0 = time.perf_counter()
        exp = self.run.exp
        out = {"version": exp.step, "policy": to_numpy(exp.model.state_dict()),
               "reward_net": to_numpy(exp.reward_net.state_dict())}
        self.export_s = time.perf_counter() - t0
        return out

    def consume(self, experience, info: dict, perf: dict[str, float], wait_s: float) -> dict:
        if info["batch_id"] in self.consumed:  # never twice: replay and ledger count each batch once
            return {"step": self.run.step, "duplicate": True, "done": self.run.done}
        t0 = time.perf_counter()
        staleness = self.run.step - experience.version
        metrics = self.run.exp.consume(experience)
        self.consumed.add(info["batch_id"])
        self.consumed_traces += experience.size
        self.labelled_added += int((~experience.heldout).sum())
        for part, flops in experience.flops.items():
            self.batch_flops[part] = self.batch_flops.get(part, 0.0) + flops
        metrics["scalars"].update({**perf, tags.PERF_STALENESS: float(staleness),
                                   tags.PERF_WEIGHT_SYNC_S: info["sync_s"] + self.export_s})
        self.run.record(metrics, time.perf_counter() - t0 + wait_s)
        return {"step": self.run.step, "staleness": staleness, "done": self.run.done}

    def discard(self, experience, info: dict) -> None:
        """A batch too stale to learn from: its FLOPs were spent, so the ledger counts them;
        nothing of it reaches a replay buffer."""
        if info["batch_id"] in self.discarded or info["batch_id"] in self.consumed:
            return
        for part, flops in experience.flops.items():
            self.run.exp.ledger.add(part, flops)
            self.batch_flops[part] = self.batch_flops.get(part, 0.0) + flops
        self.discarded.append(info["batch_id"])

    def train_supervised(self, steps: int) -> dict:
        """Supervised runs have no traces to write: the learner trains from its own data."""
        for _ in range(steps):
            if self.run.done:
                break
            t0 = time.perf_counter()
            metrics = self.run.exp.train_step()
            self.run.record(metrics, time.perf_counter() - t0)
        return {"step": self.run.step, "done": self.run.done}

    def counts(self) -> dict:
        exp = self.run.exp
        learner = exp.learner
        return {"step": exp.step, "batches": sorted(self.consumed), "traces": self.consumed_traces,
                "batch_flops": dict(self.batch_flops),
                "ledger": dict(exp.ledger.parts), "discarded": list(self.discarded),
                "labelled_added": self.labelled_added, "labelled": len(getattr(learner, "labelled", [])),
                "replay": len(getattr(learner, "kept", getattr(learner, "replay", [])))}

    def close(self) -> dict[str, float]:
        return self.run.close()


def _init_ray(cfg: Config):
    import ray  # config validation has checked that it is installed

    if not ray.is_initialized():
        # RAY_ADDRESS (set by `ray job submit`), else ray.address, else a cluster started on
        # this machine by `ray start`, else a new local one
        ray.init(address=cfg.ray.address, log_to_driver=True)
    return ray


def train_ray(cfg: Config, *, with_counts: bool = False):
    """Train one run on a Ray cluster; returns the last eval's scalars (and, ``with_counts``,
    what the learner consumed: batch ids, traces, ledger, replay sizes, dropped batches)."""
    ray = _init_ray(cfg)
    r = cfg.ray
    gpus = r.learner_gpus if r.learner_gpus is not None else (1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0)
    if gpus == 0 and cfg.device == "cuda":
        raise UserError("device=cuda but the Ray cluster has no GPU for the learner; use device=auto")
    Learner = ray.remote(LearnerActor).options(num_cpus=r.learner_cpus, num_gpus=gpus, max_restarts=0)
    # A supervised learner does all the run's work, so it computes with the threads a local
    # run would (and so the same numbers); beside trace workers it mostly waits: one thread.
    threads = int(r.learner_cpus) or (torch.get_num_threads() if cfg.train.method == "supervised" else 1)
    learner = Learner.remote(cfg, threads=threads)
    state = ray.get(learner.start.remote())  # {"step", "done"}: the learner's Run decides when to stop
    if cfg.train.method == "supervised":
        while not state["done"]:
            state = ray.get(learner.train_supervised.remote(cfg.train.log_every))
        final = ray.get(learner.close.remote())
        return (final, ray.get(learner.counts.remote())) if with_counts else final

    Worker = ray.remote(TraceWorker).options(num_cpus=r.worker_cpus, num_gpus=r.worker_gpus,
                                              max_restarts=r.max_restarts, max_task_retries=0)
    workers = [Worker.remote(cfg, i, threads=max(1, int(r.worker_cpus))) for i in range(r.workers)]
    ray.get([w.pid.remote() for w in workers])  # all started: none falls behind by its start-up
    in_flight_cap = min(r.workers, r.max_staleness + 1)
    weights = learner.weights.remote()          # one object per version, shared by all workers
    pending: dict = {}                           # ref -> (worker index, batch id)
    idle = deque(range(r.workers))
    next_id, dropped = 0, 0
    window_t0, busy, traces = time.perf_counter(), 0.0, 0

    def dispatch() -> None:
        nonlocal next_id
        while idle and len(pending) < in_flight_cap:
            w = idle.popleft()
            problems = learner.next_problems.remote(cfg.improve.problems_per_iter)  # passed on by reference
            pending[workers[w].collect.remote(weights, problems, next_id)] = (w, next_id)
            next_id += 1

    dispatch()
    while not state["done"]:
        step = state["step"]
        t_wait = time.perf_counter()
        [ref], _ = ray.wait(list(pending), num_returns=1)
        w, batch_id = pending.pop(ref)
        idle.append(w)
        try:
            experience, info = ray.get(ref)
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
            dropped += 1  # the worker died mid-batch: drop it; Ray restarts the worker
            print(f"emergent: trace worker {w} died; batch {batch_id} dropped", flush=True)
            dispatch()
            continue
        now = time.perf_counter()
        # the busy interval ended about now; only its part inside this window counts (a
        # worker runs one batch at a time, so its intervals never overlap)
        busy += min(info["busy_s"], now - window_t0)
        if step - experience.version > r.max_staleness:  # a slow worker's batch: too old to learn from
            learner.discard.remote(experience, info)
            dispatch()
            continue
        traces += experience.size
        perf = {}
        if log_due(cfg, step + 1):  # this batch closes the learner's logging window: rates over it
            span = max(now - window_t0, 1e-9)
            perf = {tags.PERF_TRACES_PER_S: traces / span, tags.PERF_WORKER_UTILISATION: busy / (span * r.workers)}
            window_t0, busy, traces = now, 0.0, 0
        state = ray.get(learner.consume.remote(experience, info, perf, now - t_wait))
        weights = learner.weights.remote()  # a new version after every update
        dispatch()
    for ref in pending:  # batches still being written are not needed
        ray.cancel(ref, force=False)
    final = ray.get(learner.close.remote())
    counts = ray.get(learner.counts.remote())
    counts["dropped"] = dropped
    if dropped:
        print(f"emergent: {dropped} batch(es) dropped after worker failures; "
              f"{len(counts['batches'])} consumed", flush=True)
    return (final, counts) if with_counts else final
