"""A data-parallel learner group (``ray.learners=N``) computes what one learner computes.

Two processes joined by gloo run the Ray runtime's own learner classes (rank 0 a
``LearnerActor``, rank 1 a ``LearnerReplica``; plain classes, no Ray needed) on the same
batches; each takes half of every update's rows. After k steps, checkpointed by rank 0,
a new group resumed from that checkpoint by both ranks takes one more: then both ranks'
parameters equal those of one ``Experiment`` that learned from the whole batches, within
fp32 rounding, for supervised learning and for every self-improvement method (their
reward nets included), and the FLOP ledger counts each update once.
"""

import contextlib
import copy
import multiprocessing
import pickle
import queue
import socket

import numpy as np
import pytest
import torch
from conftest import SEARCH, SMALL, TINY

from emergent.agents import data_parallel
from emergent.agents.data_parallel import Replica, masked_mean
from emergent.platform.config import ConfigError, load_config
from emergent.platform.experiment import Experiment

STEPS = 3
METHODS = {
    # batch 10: 5 rows a rank, with different token counts (a local denominator would weigh them wrong)
    "supervised": [*TINY, "train.batch_size=10"],
    # two clipped updates per batch (the ratio's reference) and a KL anchor: both cached per rank
    "policy_gradient": [*SMALL, "train.method=policy_gradient", "improve.updates_per_iter=2", "improve.kl_coef=0.1"],
    # replay draws: the first updates draw from a replay of fewer traces than ranks
    "expert_iteration": [*SMALL, "train.method=expert_iteration", "improve.train_batch=5"],
    "alphazero": [
        *(a for a in SMALL if not a.startswith("improve.samples=")),
        *SEARCH,
        "train.method=alphazero",
        "improve.learn_from=expert",
        "improve.train_batch=5",
    ],
}


def config(method: str, logdir, name: str):
    # a checkpoint after STEPS steps, and one step more for the group that resumes from it
    return load_config(
        None,
        [
            *METHODS[method],
            f"train.steps={STEPS + 1}",
            f"checkpoint_every={STEPS}",
            "eval.every=1000",
            f"logdir={logdir}",
            f"run_name={name}",
        ],
    )


def free_address() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{sock.getsockname()[1]}"


def _rank(rank: int, world: int, jobs: list, out) -> None:
    """One learner process: for each (method, config, batches, addresses) job, join a group,
    learn from the first STEPS batches as the Ray runtime's rank ``rank`` does (and from a
    duplicate: nobody learns it), then join a new group resumed from rank 0's checkpoint
    and learn from the last batch; report its state."""
    torch.set_num_threads(1)
    from emergent.platform.ray_runtime import LearnerActor, LearnerReplica

    results = {}
    for method, cfg, batches, addresses in jobs:
        resumed = copy.deepcopy(cfg)
        resumed.resume = True
        for life, (c, address, ids) in enumerate(
            [(cfg, addresses[0], [*range(STEPS), 0]), (resumed, addresses[1], [STEPS])]
        ):
            if rank == 0:
                learner = LearnerActor(c)
                learner.join_group(address, world)
                for i in ids:
                    learner.consume(batches[i], {"batch_id": i, "busy_s": 0.0, "sync_s": 0.0})
                ex = learner.run.experiment
                learner.run.close()
            else:
                learner = LearnerReplica(c, rank)
                learner.join_group(address, world)
                for i in ids:
                    learner.consume(batches[i])
                ex = learner.experiment
            data_parallel.leave()
            assert ex.step == STEPS + life, (method, rank, life, ex.step)  # the duplicate was learned by nobody
        results[method] = {
            "model": ex.model.state_dict(),
            "ledger": dict(ex.ledger.parts),
            "reward_net": ex.method.reward_net.state_dict() if ex.method.reward_net else None,
        }
    out.put((rank, pickle.dumps(results)))


def test_two_learners_on_half_batches_resumed_from_rank_0s_checkpoint_reach_the_parameters_of_one_learner(tmp_path):
    jobs, reference = [], {}
    for method in METHODS:
        cfg = config(method, tmp_path, f"{method}_one")
        one = Experiment(cfg)
        # batches collected with the starting weights: the update, not the collection, is under test
        batches = [one.collect(one.next_problems()) for _ in range(STEPS + 1)]
        for collected in batches:
            one.consume(collected)
        reference[method] = {
            "model": one.model.state_dict(),
            "ledger": dict(one.ledger.parts),
            "reward_net": one.method.reward_net.state_dict() if one.method.reward_net else None,
        }
        jobs.append((method, config(method, tmp_path, f"{method}_two"), batches, [free_address(), free_address()]))

    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_rank, args=(rank, 2, jobs, out)) for rank in range(2)]
    for p in procs:
        p.start()
    got = {}
    try:  # a rank that fails ends the test at once (its peer waits in a collective: killed below)
        while len(got) < len(procs):
            with contextlib.suppress(queue.Empty):
                rank, result = out.get(timeout=0.5)
                got[rank] = result
            dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            assert not dead, f"a learner process failed (exit codes {dead}); its traceback is above"
    finally:
        for p in procs:
            p.join(timeout=30) if len(got) == len(procs) else p.kill()
    ranks = [pickle.loads(got[r]) for r in range(2)]

    for method, want in reference.items():
        for result in ranks:
            r = result[method]
            for net in ("model", "reward_net"):
                if want[net] is None:
                    continue
                for name, value in want[net].items():
                    where = f"{method} {net}.{name}"
                    torch.testing.assert_close(
                        r[net][name], value, rtol=1e-4, atol=2e-5, msg=lambda m, where=where: f"{where}: {m}"
                    )
                    # and the ranks agree with each other exactly: they took the same summed step
                    assert torch.equal(r[net][name], ranks[0][method][net][name]), (method, net, name)
        assert ranks[0][method]["ledger"] == pytest.approx(want["ledger"], rel=1e-12), method  # counted once


def test_rows_split_contiguously_and_cover_every_row_once():
    for n in (0, 1, 5, 10):
        for world in (1, 2, 3):
            parts = [Replica(rank, world).rows(n) for rank in range(world)]
            covered = np.concatenate([np.arange(n)[s] for s in parts])
            assert covered.tolist() == list(range(n))
            sizes = [s.stop - s.start for s in parts]
            assert max(sizes) - min(sizes) <= 1


def test_masked_mean_outside_a_group_is_the_plain_masked_mean():
    values, mask = torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    assert float(masked_mean(values, mask)) == pytest.approx(8 / 3)
    assert float(masked_mean(values, torch.zeros_like(mask))) == 0.0


def test_a_learner_group_needs_the_ray_runtime(tmp_path):
    with pytest.raises(ConfigError, match="ray.learners=2 needs runtime=ray"):
        load_config(None, [*TINY, "ray.learners=2", f"logdir={tmp_path}"])
    with pytest.raises(ConfigError, match="ray.learners must be >= 1"):
        load_config(None, [*TINY, "ray.learners=0", "runtime=ray", f"logdir={tmp_path}"])
