"""The Ray runtime: trace workers run a method's ``collect``, a learner actor its ``learn``.

The driver loop reads like the local one; Ray only wraps the same classes, and every
method, supervised included, goes the same way:

  TraceWorker   an ``Experiment`` whose method only ``collect``s: it reads weights (the
                ones ``Method.networks()`` names), never updates them
  LearnerActor  a ``Run`` (Experiment + run directory): ``consume``, evaluation,
                checkpoints, TensorBoard and the perf windows, exactly as ``train_local``
                does them; the driver hands it each batch's raw timings

Weights travel once per version: the learner returns a CPU state dict of numpy arrays
from an actor method, so it is stored once in the object store, and every worker
receives the same reference (zero-copy reads on the same node). A worker loads a version
only when it is newer than the one it holds. A method whose ``collect`` reads no weights
(supervised: it wraps gold traces) gets none, and its learner computes with the driver's
thread count, as a local run does.

Batches are consumed in the order they were dispatched, so a run's data order does not
depend on which worker is faster. Bounded staleness: at most ``ray.max_staleness + 1``
batches are in flight (by default ``workers - 1``: one per worker), so a consumed batch is
at most ``max_staleness`` versions old; one
that is older anyway (a guard) is discarded: the ledger counts its FLOPs, no replay sees
its traces. The driver runs one batch ahead of the learner: it submits batch k's consume
and the freed worker's next batch, then waits for batch k - 1's result, so the learner
never idles for a driver round trip (a batch submitted after the run is done is not
learned from, nor counted).

Data parallelism (``ray.learners=N``): N learner actors form one torch.distributed group
(gloo on CPU, NCCL on CUDA; agents/data_parallel.py). Rank 0 is the ``LearnerActor``
above: it alone evaluates, checkpoints, logs, publishes weights and keeps the FLOP ledger
(each update's FLOPs are the whole batch's, counted once). Ranks 1..N-1 are
``LearnerReplica``s: the same Experiment, handed every batch rank 0 is, in the same
order; each update splits its rows over the group and sums the gradients, so every rank
takes the same step. Rank 0 tells the group, per batch, whether it learns from it (not a
duplicate, not past the end), and a replica resumes from rank 0's checkpoint.

Faults: a trace worker that dies is restarted by Ray (``ray.max_restarts``); the batch it
was writing is dropped (its problems are simply not trained on) and the worker gets a new
one. A learner (any rank) that dies with its process or node ends that learner's life: its
workers and the rest of its group are killed and the run starts again from its last
checkpoint with ``resume=true`` (also up to ``ray.max_restarts`` times); ``Run`` hides what
the lost learner logged past it. Nothing reaches the replay buffers or the FLOP ledger
except through ``consume``, and each batch carries a unique id the learner consumes at most
once.

With platform/sweep.py and platform/storage.py, the only modules that use ray.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import socket
import time
from collections import deque

import numpy as np
import torch

from emergent import tags
from emergent.agents import data_parallel

from .config import Config
from .errors import UserError
from .experiment import Collected, Experiment
from .run import Run
from .storage import check_shared_storage


def to_numpy(state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in state.items()}


def load_numpy(module: torch.nn.Module, state: dict[str, np.ndarray]) -> None:
    module.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()})


class TraceWorker:
    """Writes and judges traces with the latest published weights (a plain class; Ray wraps it)."""

    def __init__(self, cfg: Config, index: int, threads: int = 1) -> None:
        torch.set_num_threads(max(1, threads))
        self.experiment = Experiment(cfg, worker=True)
        # workers sample different traces; worker 0 draws what a local run's collect draws
        self.experiment.method.reseed(cfg.seed, stream=index)
        self.index, self.loaded = index, -1

    def collect(self, weights: dict | None, problems: list, batch_id: int, version: int) -> tuple[Collected, dict]:
        """``version``: the learner's step when the batch was dispatched (``weights``, when
        the method reads any, are that version)."""
        t0 = time.perf_counter()
        sync = 0.0
        if weights is not None and weights["version"] > self.loaded:
            for name, module in self.experiment.method.networks().items():
                load_numpy(module, weights[name])
            self.loaded = weights["version"]
            sync = time.perf_counter() - t0
        collected = self.experiment.collect(problems, version)
        return collected, {
            "batch_id": batch_id,
            "worker": self.index,
            "busy_s": time.perf_counter() - t0,
            "sync_s": sync,
        }

    def pid(self) -> int:
        return os.getpid()


class WorkerWindow:
    """The learner's view of its trace workers over one logging window of its ``Run``: the
    workers' busy seconds, the learner's waits for batches, and at the window's close the rates
    over its wall clock (``Run.window_hook``). Only a runtime with trace workers has these."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.busy_s = 0.0  # trace workers' busy seconds inside the window
        self.wait_s = 0.0  # the learner's seconds waiting for batches

    def add(self, run: Run, busy_s: float, wait_s: float) -> None:
        """A batch's timings, before its step is recorded. A worker writes one batch at a time:
        only the part of its busy interval inside this window counts, so utilisation never
        exceeds 1."""
        self.busy_s += min(busy_s, time.perf_counter() - run.window_t0)
        self.wait_s += wait_s

    def __call__(self, run: Run, span: float) -> dict[str, float]:
        """The window's rates (its wall-clock ``span``), then a fresh window."""
        learner = run.window_s - self.wait_s + run.window_other
        values = {
            tags.PERF_TRACES_PER_S: sum(s.traces for s in run.window) / span,
            tags.PERF_WORKER_UTILISATION: self.busy_s / (span * self.workers),
            tags.PERF_LEARNER_BUSY: min(1.0, learner / span),
            tags.PERF_DATA_WAIT_S: self.wait_s / len(run.window),
        }
        self.busy_s = self.wait_s = 0.0
        return values


class LearnerActor:
    """A ``Run`` in an actor: the method's learning, evaluation, checkpoints, TensorBoard."""

    def __init__(self, cfg: Config, driver_threads: int = 1) -> None:
        self.run = Run(cfg)
        self.run.window_hook = self.window = WorkerWindow(cfg.ray.workers)
        self.publishes = bool(self.run.experiment.method.networks())  # workers need our weights
        torch.set_num_threads(learner_threads(cfg, self.publishes, driver_threads))
        self.consumed: set[int] = set()  # batch ids learned from
        self.consumed_traces = 0
        self.labelled_added = 0  # traces handed to the reward net's replay
        self.discarded: list[int] = []  # batch ids too stale to learn from
        self.batch_flops: dict[str, float] = {}  # what the consumed batches cost to collect
        self.export_s = 0.0
        self.idle_since = time.perf_counter()  # when the learner last finished a consume (or started)

    def group_address(self) -> str:
        """Where the learner group meets: a free port on this actor's node (rank 0's)."""
        import ray

        with socket.socket() as sock:
            sock.bind(("", 0))
            port = sock.getsockname()[1]
        return f"tcp://{ray.util.get_node_ip_address()}:{port}"

    def join_group(self, address: str, world: int) -> None:
        join_group(self.run.experiment, 0, world, address)

    def start(self) -> dict:
        if self.run.step == 0:
            self.run.evaluate()
        self.idle_since = time.perf_counter()
        return {"step": self.run.step, "done": self.run.done, "publishes": self.publishes}

    def next_problems(self, batch_id: int) -> list:
        return self.run.experiment.next_problems(batch_id)

    def weights(self) -> dict:
        t0 = time.perf_counter()
        out = {
            "version": self.run.step,
            **{name: to_numpy(m.state_dict()) for name, m in self.run.experiment.method.networks().items()},
        }
        self.export_s = time.perf_counter() - t0
        self.idle_since = time.perf_counter()  # exporting is the learner's work, not a wait for data
        return out

    def consume(self, collected: Collected, info: dict) -> dict:
        duplicate = info["batch_id"] in self.consumed  # never twice: replay and ledger count each batch once
        late = self.run.done  # the driver submits one batch ahead; one that arrives after the end is not learned
        if data_parallel.current() is not None:  # the replicas learn from this batch exactly when rank 0 does
            data_parallel.broadcast_flag(not (duplicate or late), self.run.experiment.device)
        if duplicate:
            return {"step": self.run.step, "duplicate": True, "done": self.run.done}
        if late:
            return {"step": self.run.step, "late": True, "done": True}
        t0 = time.perf_counter()
        wait_s = t0 - self.idle_since  # the learner's idle gap before this batch: its wait for data
        self.run.experiment.settle(info["batch_id"])  # before this step's checkpoint
        staleness = self.run.step - collected.version
        step = self.run.experiment.consume(collected)
        experience = collected.experience
        self.consumed.add(info["batch_id"])
        self.consumed_traces += experience.size
        self.labelled_added += int((~experience.heldout).sum())
        for part, flops in experience.flops.items():
            self.batch_flops[part] = self.batch_flops.get(part, 0.0) + flops
        self.window.add(self.run, info["busy_s"], wait_s)
        sync_s = info["sync_s"] + self.export_s  # weight sync: the learner's export + the worker's load
        step = dataclasses.replace(
            step, scalars={**step.scalars, tags.PERF_STALENESS: float(staleness), tags.PERF_WEIGHT_SYNC_S: sync_s}
        )
        self.run.record(step, time.perf_counter() - t0 + wait_s)
        self.idle_since = time.perf_counter()
        return {"step": self.run.step, "staleness": staleness, "done": self.run.done}

    def discard(self, collected: Collected, info: dict) -> None:
        """A batch too stale to learn from: its FLOPs were spent, so the ledger counts them;
        nothing of it reaches a replay buffer."""
        if info["batch_id"] in self.discarded or info["batch_id"] in self.consumed:
            return
        self.run.experiment.settle(info["batch_id"])
        for part, flops in collected.experience.flops.items():
            self.run.experiment.ledger.add(part, flops)
            self.batch_flops[part] = self.batch_flops.get(part, 0.0) + flops
        self.discarded.append(info["batch_id"])

    def counts(self) -> dict:
        ex = self.run.experiment
        method = ex.method
        reward = method.reward_trainer
        return {
            "step": ex.step,
            "batches": sorted(self.consumed),
            "traces": self.consumed_traces,
            "batch_flops": dict(self.batch_flops),
            "ledger": dict(ex.ledger.parts),
            "discarded": list(self.discarded),
            "labelled_added": self.labelled_added,
            "labelled": len(reward.replay) if reward else 0,
            "replay": len(method.replay) if method.replay is not None else 0,
        }

    def close(self) -> dict[str, float]:
        return self.run.close()


class LearnerReplica:
    """Rank ``rank`` > 0 of a data-parallel learner group: the run's Experiment (resumed
    from rank 0's checkpoint), learning from every batch rank 0 learns from, its share of
    each update's rows. It evaluates, logs and writes nothing."""

    def __init__(self, cfg: Config, rank: int, driver_threads: int = 1) -> None:
        self.experiment = Experiment(cfg)
        torch.set_num_threads(learner_threads(cfg, bool(self.experiment.method.networks()), driver_threads))
        if cfg.resume:
            self.experiment.try_resume()
        self.rank = rank

    def join_group(self, address: str, world: int) -> None:
        join_group(self.experiment, self.rank, world, address)

    def consume(self, collected: Collected) -> int:
        if data_parallel.broadcast_flag(False, self.experiment.device):  # rank 0's verdict on this batch
            self.experiment.consume(collected)
        return self.experiment.step


def learner_threads(cfg: Config, publishes: bool, driver_threads: int) -> int:
    """A learner's torch threads: ``ray.learner_cpus`` when a whole CPU or more is reserved; else, for a method
    whose workers read no weights (the run's compute is the learners'), the driver's
    threads shared by the group (so one learner computes what a local run computes);
    else one (beside trace workers a learner mostly waits)."""
    return int(cfg.ray.learner_cpus) or (1 if publishes else max(1, driver_threads // cfg.ray.learners))


def join_group(experiment: Experiment, rank: int, world: int, address: str) -> None:
    """Join the learner group and take rank 0's weights (every rank built the same ones from
    the same seed and checkpoint; the broadcast makes sure, as DDP does)."""
    data_parallel.join(rank, world, address, "nccl" if experiment.device.type == "cuda" else "gloo")
    method = experiment.method
    for module in (method.policy, method.reward_net):
        if module is not None:
            data_parallel.broadcast_module(module)


def _init_ray(cfg: Config):
    import ray  # config validation has checked that it is installed

    if not ray.is_initialized():
        # RAY_ADDRESS (set by `ray job submit`), else ray.address, else a cluster started on
        # this machine by `ray start`, else a new local one
        ray.init(address=cfg.ray.address, log_to_driver=True, include_dashboard=cfg.ray.dashboard)
    return ray


def _learner_lost(ray, learners: list, error: Exception, wait_s: float = 120.0) -> bool:
    """Whether ``error`` means a learner (any rank of the group) died with its process or
    node. An actor on a node that stopped answering is first "unavailable", and dead only
    once the cluster has marked its node dead (missed health checks): wait for that verdict."""
    ids = {learner._actor_id.hex() for learner in learners}
    if isinstance(error, ray.exceptions.ActorDiedError) and error.actor_id in ids:
        return True
    unavailable = isinstance(error, ray.exceptions.ActorUnavailableError) and error.actor_id in ids
    # in a group, a rank's collective fails (an error in its task) when a peer dies: give the
    # cluster a moment to record that death before reading the error as the rank's own
    grace = time.monotonic() + (10.0 if len(ids) > 1 and isinstance(error, ray.exceptions.RayTaskError) else 0.0)
    end = time.monotonic() + wait_s
    while time.monotonic() < end:
        states = [_actor_state(actor_id) for actor_id in ids]
        if "DEAD" in states:
            return True
        if all(state == "ALIVE" for state in states) and not unavailable and time.monotonic() >= grace:
            return False  # all alive, and the error was not theirs: a worker's, a lost object, a bug
        time.sleep(0.5)
    return False


def _actor_state(actor_id: str) -> str | None:
    from ray._private.state import actors  # the GCS's record of one actor (no dashboard needed)

    return actors(actor_id).get("State")


def _get_all(ray, refs: list) -> list:
    """The results of ``refs``, raising the first error as soon as any ref fails: a rank of a
    learner group whose peer died may wait in a collective and never return."""
    pending = list(refs)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        ray.get(ready)  # raises that ref's error
    return ray.get(refs)


class LearnerLost(Exception):
    """The learner actor died with its process or node (not an error in its own code)."""

    def __init__(self, why: str, dropped: int) -> None:
        super().__init__(why)
        self.why = why
        self.dropped = dropped  # batches its workers lost before it did


def train_ray(cfg: Config, *, with_counts: bool = False, check_storage: bool = True):
    """Train one run on a Ray cluster; returns the last eval's scalars (and, ``with_counts``,
    what the learner consumed: batch ids, traces, ledger, replay sizes, dropped batches).

    A learner lost with its process or node (a system failure, not an exception in its own
    code) takes the run's workers with it: the run starts again, ``resume=true``, from its
    last checkpoint, with a new learner wherever the cluster has room, up to
    ``ray.max_restarts`` times. Its steps, FLOPs and scalars after that checkpoint are
    counted once: the resumed learner hides what the lost one logged past it.

    ``check_storage``: first check that every node of the cluster reads and writes
    ``logdir`` (platform/storage.py; a sweep has checked it for its runs)."""
    ray = _init_ray(cfg)
    if check_storage:
        check_shared_storage(ray, cfg.logdir)
    dropped = restarts = 0
    while True:
        try:
            final, counts = _train_ray_once(ray, cfg)
            break
        except LearnerLost as lost:
            restarts += 1
            if restarts > cfg.ray.max_restarts:
                raise RuntimeError(
                    f"the learner actor was lost {restarts} times (ray.max_restarts="
                    f"{cfg.ray.max_restarts}); giving up: {lost}"
                ) from None
            dropped += lost.dropped
            print(
                f"emergent: the learner actor was lost ({lost.why}); resuming the run from its last "
                f"checkpoint ({restarts} of {cfg.ray.max_restarts} restarts)",
                flush=True,
            )
            cfg = copy.deepcopy(cfg)
            cfg.resume = True
    counts["dropped"] += dropped
    return (final, counts) if with_counts else final


def _train_ray_once(ray, cfg: Config) -> tuple[dict[str, float], dict]:
    """One learner's life: the run from its checkpoint (if resuming) to its end, or until
    the learner is lost (``LearnerLost``, its workers killed)."""
    r = cfg.ray
    gpus = (
        r.learner_gpus if r.learner_gpus is not None else (1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0)
    )
    if gpus == 0 and cfg.device == "cuda":
        raise UserError("device=cuda but the Ray cluster has no GPU for the learner; use device=auto")
    if gpus and r.learners * gpus > ray.cluster_resources().get("GPU", 0):  # else a rank would wait forever
        raise UserError(
            f"ray.learners={r.learners} learners of {gpus} GPU each need {r.learners * gpus:g} GPUs; "
            f"the Ray cluster has {ray.cluster_resources().get('GPU', 0):g}"
        )
    learner = (
        ray.remote(LearnerActor)
        .options(num_cpus=r.learner_cpus, num_gpus=gpus, max_restarts=0)
        .remote(cfg, driver_threads=torch.get_num_threads())
    )
    # ranks 1.. of a data-parallel learner group: built beside rank 0, joined before it starts
    replicas = [
        ray.remote(LearnerReplica)
        .options(num_cpus=r.learner_cpus, num_gpus=gpus, max_restarts=0)
        .remote(cfg, rank, driver_threads=torch.get_num_threads())
        for rank in range(1, r.learners)
    ]
    Worker = ray.remote(TraceWorker).options(
        num_cpus=r.worker_cpus, num_gpus=r.worker_gpus, max_restarts=r.max_restarts, max_task_retries=0
    )
    # the workers start while the learner builds its run and evaluates step 0: each start
    # is a process, torch and an Experiment, and none depends on another
    workers = [Worker.remote(cfg, i, threads=max(1, int(r.worker_cpus))) for i in range(r.workers)]
    dropped = 0
    try:
        if replicas:
            address = ray.get(learner.group_address.remote())
            ray.get([rank.join_group.remote(address, r.learners) for rank in [learner, *replicas]])
        state = ray.get(learner.start.remote())  # {"step", "done", "publishes"}: the learner's Run decides when to stop
        publishes = state["publishes"]
        ray.get([w.pid.remote() for w in workers])  # all started: none falls behind by its start-up
        in_flight_cap = min(r.workers, r.max_staleness + 1)
        if in_flight_cap < r.workers and publishes:
            print(
                f"emergent: ray.max_staleness={r.max_staleness} keeps at most {in_flight_cap} batches in flight: "
                f"{r.workers - in_flight_cap} of {r.workers} trace workers wait (ray.max_staleness={r.workers - 1} "
                f"keeps all busy)",
                flush=True,
            )
        weights = learner.weights.remote() if publishes else None  # one object per version, shared by all workers
        pending: deque = deque()  # (ref, worker index, batch id), in dispatch order
        idle = deque(range(r.workers))
        next_id = 0
        step = state["step"]  # the learner's step once every consume submitted so far has run
        learning = None  # the consume submitted last, not yet awaited

        def dispatch() -> None:
            nonlocal next_id
            while idle and len(pending) < in_flight_cap:
                w = idle.popleft()
                problems = learner.next_problems.remote(next_id)  # passed on by reference
                pending.append((workers[w].collect.remote(weights, problems, next_id, step), w, next_id))
                next_id += 1

        # Pipelined: the driver hands the learner batch k and the freed worker its next batch,
        # then waits for batch k - 1's consume, never for batch k's. The learner's queue (actor
        # calls run in submission order: consume, then its new weights, then the next problems)
        # is never empty for a driver round trip, and a worker's batch waits only for the
        # weights it must read. A consume submitted after the run is done learns nothing.
        dispatch()
        while not state["done"]:
            ref, w, batch_id = pending.popleft()  # the oldest batch: consumed in dispatch order
            try:
                collected, info = ray.get(ref)
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
                # a batch is lost when its worker dies, or when the learner that handed it its
                # problems did: that one ends the run (resume=true continues from its checkpoint)
                ray.get(learner.__ray_ready__.remote())  # raises RayActorError if the learner is gone
                dropped += 1  # the worker died mid-batch: drop it; Ray restarts the worker
                if dropped > r.workers * (r.max_restarts + 1):
                    raise RuntimeError(
                        f"trace workers died {dropped} times (ray.max_restarts={r.max_restarts}); giving up"
                    ) from None
                print(f"emergent: trace worker {w} died; batch {batch_id} dropped", flush=True)
                idle.append(w)
                dispatch()
                continue
            idle.append(w)
            if step - collected.version > r.max_staleness:  # too old to learn from (a guard)
                learner.discard.remote(collected, info)
                dispatch()
                continue
            if replicas:  # one copy in the object store, read by every rank
                collected = ray.put(collected)
            previous, learning = (
                learning,
                [learner.consume.remote(collected, info), *[rank.consume.remote(collected) for rank in replicas]],
            )
            step += 1
            if publishes:
                weights = learner.weights.remote()  # the version after this consume: a new one per update
            dispatch()
            if previous is not None:
                state = _get_all(ray, previous)[0]
        if learning is not None:
            _get_all(ray, learning)  # a consume submitted after the run was done: it learned nothing
        for ref, _, _ in pending:  # batches still being written are not needed
            ray.cancel(ref, force=False)
        final = ray.get(learner.close.remote())
        counts = ray.get(learner.counts.remote())
    except (
        ray.exceptions.RayActorError,
        ray.exceptions.ActorUnavailableError,
        ray.exceptions.ObjectLostError,
        ray.exceptions.RayTaskError,
    ) as error:
        if not _learner_lost(ray, [learner, *replicas], error):
            raise  # a worker's loss the loop does not handle, or a lost object: not the learner's
        # the workers read the lost learner's weights and problems, and the rest of its group
        # waits on a collective that will never complete: a new life gets new ones
        for actor in [*workers, *replicas, learner]:
            ray.kill(actor, no_restart=True)
        # the next life's ranks each read last.pt: none of this life's may still write it
        end = time.monotonic() + 60.0
        while time.monotonic() < end and any(_actor_state(a._actor_id.hex()) != "DEAD" for a in [*replicas, learner]):
            time.sleep(0.2)
        raise LearnerLost(str(error).strip().splitlines()[0][:200], dropped) from error
    counts["dropped"] = dropped
    if dropped:
        print(
            f"emergent: {dropped} batch(es) dropped after worker failures; {len(counts['batches'])} consumed",
            flush=True,
        )
    return final, counts
