"""What the methods that learn from their own traces share (expert iteration, policy gradient,
AlphaZero): the state they hold (``SelfImprover``) and the steps their own ``collect`` and
``learn`` call, in order, as functions:

  collect:  ``sample_traces`` (or a search) -> ``judge`` -> ``make_experience``
  learn:    the method's replay -> ``RewardTrainer.update`` -> the method's policy updates
            (``Trainer.step_batch``) -> ``learned``

A method reads top to bottom in its own file; nothing here calls back into it.
"""

from __future__ import annotations

from typing import ClassVar, Optional, Sequence

import numpy as np
import torch

from emergent import tags

from .method import last_update
from .model import TransformerLM
from .records import Experience, Prompts, Replay, StepResult, Trace
from .reward_net import RewardNet
from .reward_trainer import RewardTrainer, near_misses, split_heldout
from .rollouts import Rollouts, majority_labels, sample_rollouts
from .sections import MethodConfig, improve_view
from .trainer import Trainer, Update


class SelfImprover:
    """The state every self-improver holds: its policy and the policy's trainer, the
    reward-and-objective network and its trainer, the random streams, and what it reads of
    ``reward.*`` for its experience. No step of a method's own lives here."""

    demonstrations = None  # never: answers reach a self-improver only as the verifier's verdicts
    # what every self-improver reads beyond its Config's keys (init_from: the platform's warm start)
    reads: ClassVar[tuple[str, ...]] = ("improve.init_from", "reward.*")

    Config: ClassVar[type]  # the method's own dataclass of the improve.* keys it reads
    votes = False  # labels by majority vote, never the verifier (expert iteration's label_source)

    def __init__(self, policy: TransformerLM, cfg: MethodConfig, device: torch.device) -> None:
        cfg.improve.validate()
        self.policy, self.device = policy, device
        self.cfg = improve_view(self.Config, cfg.improve)
        self.problems_per_step = self.cfg.problems_per_iter
        self.step_labels = bool(cfg.reward.step_labels)  # a process reward: the step checker's labels too
        self.reward_net = RewardNet.for_policy(policy, cfg.reward, step_head=self.step_labels)
        self.trainer = Trainer(policy, cfg.optim, cfg.train.steps * self.cfg.updates_per_iter, device)
        self.reward_trainer = RewardTrainer(self.reward_net, cfg.reward, cfg.train.steps, device)
        self.heldout_fraction = cfg.reward.heldout_fraction
        self.reward_rollouts = cfg.reward.rollouts
        self.reward_near_misses = cfg.reward.near_misses
        self.step_drills = cfg.reward.step_drills  # (config validation: only with step labels)
        self.replay: Optional[Replay] = None  # a method that replays its own traces sets one
        self.reseed(cfg.seed)

    def reseed(self, seed: int, stream: int = 0) -> None:
        """Draws from ``seed``. ``collect`` draws from its own streams (``generator`` for
        sampling, ``collect_rng`` for held-out splits and near misses), which ``stream``
        separates between trace workers; ``learn`` from ``learn_rng`` (replay draws, reward-
        net batches). Kept apart, a run's draws do not depend on which process collects: a
        Ray run with one trace worker (stream 0) draws what the local run draws."""
        self.generator = torch.Generator().manual_seed(seed * 1_000_003 + stream)  # CPU: reproducible
        self.collect_rng = np.random.default_rng([seed, 7, stream])
        self.learn_rng = np.random.default_rng([seed, 11])

    def networks(self) -> dict[str, torch.nn.Module]:
        return {"policy": self.policy, "reward_net": self.reward_net}

    def state_dict(self) -> dict:
        state = {
            "learner": self.trainer.state_dict(),  # the key checkpoints have always used
            "reward": self.reward_trainer.state_dict(),
            "generator": self.generator.get_state(),
            "collect_rng": self.collect_rng.bit_generator.state,
            "learn_rng": self.learn_rng.bit_generator.state,
        }
        if self.replay is not None:
            state["replay"] = self.replay.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.trainer.load_state_dict(state["learner"])
        self.reward_trainer.load_state_dict(state["reward"])
        self.generator.set_state(state["generator"])
        self.collect_rng.bit_generator.state = state["collect_rng"]
        self.learn_rng.bit_generator.state = state["learn_rng"]
        if self.replay is not None:
            self.replay.load_state_dict(state["replay"])


# -- collection (no parameter changes) ----------------------------------------------------------


def sample_traces(m: SelfImprover, problems: Prompts, samples: int, temperature: float) -> Rollouts:
    """``samples`` traces per problem from the method's policy, drawn from its collect stream
    (one KV-cached generate call)."""
    return sample_rollouts(
        m.policy, problems.prompts, samples, temperature=temperature, generator=m.generator, device=m.device
    )


def judge(
    m: SelfImprover, ro: Rollouts, problems: Prompts, *, vote: bool, source: str
) -> tuple[np.ndarray, np.ndarray, float]:
    """Labels of sampled traces by the verifier (or, ``vote``, by majority vote, never
    calling it) and the scores the update uses (``source``: the labels, or the reward
    net's P(correct)). Returns (labels [R], scores [R], reward-net FLOPs)."""
    labels = (
        majority_labels(ro.rows, ro.completions) if vote else problems.verify(ro.rows, ro.completions).astype(float)
    )
    if source != "reward_net":
        return labels, labels, 0.0
    scores, flops = m.reward_trainer.score(ro.prompts, ro.completions)
    return labels, scores, flops


def make_experience(
    m: SelfImprover, problems: Prompts, rows, completions, finished, labels, scores, flops: dict, **fields
) -> Experience:
    """The batch's Experience: a random share of its traces is held out of reward-net
    training and scored now, for the diagnostics; the others carry their step labels (a
    process reward's, ``reward.step_labels``); traces for the reward net alone join it."""
    heldout = split_heldout(len(rows), m.heldout_fraction, m.collect_rng)
    held = np.flatnonzero(heldout)
    probs, process = np.zeros(0), None
    if len(held):
        held_prompts, held_completions = [problems.prompts[rows[i]] for i in held], [completions[i] for i in held]
        if m.step_labels:  # the process reward's ranking too, from the same forward
            probs, process, f = m.reward_trainer.process_scores(held_prompts, held_completions)
        else:
            probs, f = m.reward_trainer.score(held_prompts, held_completions)
        flops[tags.REWARD] = flops.get(tags.REWARD, 0.0) + f
    extra = reward_traces(m, problems, flops) if m.reward_rollouts else ()
    if m.reward_near_misses:
        extra += near_miss_traces(
            m, problems, np.asarray(rows), completions, np.asarray(finished, dtype=bool), ~heldout
        )
    if m.step_drills and problems.drill_steps is not None:
        extra += drill_traces(m, problems)
    steps = None
    if m.step_labels and problems.check_steps is not None:  # only the traces the reward net trains on
        train = np.flatnonzero(~heldout)
        judged = problems.check_steps(np.asarray(rows)[train], [completions[i] for i in train])
        steps = [None] * len(rows)
        for i, judged_steps in zip(train.tolist(), judged):
            steps[i] = tuple(bool(y) for y in judged_steps)
    return Experience(
        list(problems.prompts),
        np.asarray(rows),
        list(completions),
        np.asarray(finished, dtype=bool),
        np.asarray(labels, dtype=float),
        np.asarray(scores, dtype=float),
        heldout,
        probs,
        flops,
        heldout_process=process,
        reward_traces=extra,
        steps=steps,
        **fields,
    )


def reward_traces(m: SelfImprover, problems: Prompts, flops: dict) -> tuple[Trace, ...]:
    """``reward.rollouts`` sampled traces per problem for the reward net alone, labelled
    as the method labels its own (by the verifier; by majority vote where the method
    votes, never calling the verifier). Their generation is counted in ``flops``."""
    ro = sample_traces(m, problems, m.reward_rollouts, temperature=1.0)
    flops[tags.GENERATE] = flops.get(tags.GENERATE, 0.0) + ro.flops
    labels, _, _ = judge(m, ro, problems, vote=m.votes, source="verifier")
    return tuple(Trace(p, c, float(y)) for p, c, y in zip(ro.prompts, ro.completions, labels * ro.finished))


def near_miss_traces(
    m: SelfImprover,
    problems: Prompts,
    rows: np.ndarray,
    completions: Sequence[str],
    finished: np.ndarray,
    train: np.ndarray,
) -> tuple[Trace, ...]:
    """``reward.near_misses`` copies of each trace the reward net trains on (``train`` [R]
    bool), one digit changed, labelled by the verifier (a copy of an unfinished trace
    stays unfinished: label 0)."""
    keep = np.flatnonzero(train)
    src, copies = near_misses([completions[i] for i in keep], m.reward_near_misses, m.collect_rng)
    if not copies:
        return ()
    at = keep[src]
    labels = problems.verify(rows[at], copies).astype(float) * finished[at]
    return tuple(Trace(problems.prompts[r], c, float(y)) for r, c, y in zip(rows[at], copies, labels))


def drill_traces(m: SelfImprover, problems: Prompts) -> tuple[Trace, ...]:
    """``reward.step_drills`` drills per problem for the step head alone, drawn from the
    collect stream and labelled by the step checker (no verdict: they train no value). A
    drill longer than the context (BOS, prompt, drill, EOS) is dropped."""
    rows = np.repeat(np.arange(len(problems.prompts)), m.step_drills)
    drills = problems.drill_steps(rows, m.collect_rng)
    fits = [len(problems.prompts[r]) + len(d) + 2 <= m.policy.cfg.max_len for r, d in zip(rows.tolist(), drills)]
    rows, drills = rows[fits], [d for d, f in zip(drills, fits) if f]
    judged = problems.check_steps(rows, drills)
    return tuple(
        Trace(problems.prompts[r], c, 0.0, steps=tuple(bool(y) for y in labels), value=False)
        for r, c, labels in zip(rows.tolist(), drills, judged)
    )


# -- learning -----------------------------------------------------------------------------------


def learned(
    experience: Experience,
    updates: Sequence[Update],
    scalars: dict[str, float],
    reward: tuple[float, dict[str, float]],
) -> StepResult:
    """The StepResult of one ``learn``: the policy's ``updates`` (and the method's
    ``scalars``) and the reward net's (``reward``: ``RewardTrainer.update``'s FLOPs and
    scalars) in the ledger, FLOPs per newly solved problem, the held-out traces' reward-net
    scores for the platform's diagnostics."""
    reward_flops, reward_scalars = reward
    flops = {tags.REWARD: reward_flops, tags.TRAIN: sum(u.flops for u in updates)}
    solved = len(np.unique(experience.rows[experience.finished & (experience.labels >= 0.5)]))
    if solved:  # by the verifier's labels (under a vote, by agreement: what the method can see)
        total = sum(experience.flops.values()) + sum(flops.values())
        scalars = {**scalars, tags.TRAIN_FLOPS_PER_SOLVED: total / solved}
    return StepResult(
        flops=flops,
        tokens=sum(u.tokens for u in updates),
        **last_update(updates),
        scalars={**scalars, **reward_scalars},
        heldout=(experience.heldout_probs, experience.labels[experience.heldout]),
        heldout_process=experience.heldout_process,
        accuracy=experience.problem_accuracy(),
    )
