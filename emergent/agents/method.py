"""The one interface every learner implements, supervised included, and what they share.

A ``Method`` turns a batch of ``Prompts`` into ``Experience`` (``collect``: reads the
weights, never changes them; a trace worker runs it under Ray) and learns from it
(``learn``: the updates, on the learner). Runtimes drive every method through these two
calls and never ask which method it is; what differs is declared, not branched on:

  demonstrations   which gold a method learns from ("trace" or "answer"), or None: only
                   then do its ``Prompts`` carry gold (a self-improver never sees any)
  networks()       the weights ``collect`` reads: what a runtime publishes to its workers
  reads            the config keys it reads beyond the shared ones: a key another method
                   reads and this one does not is refused when set (``reads_key``)

``SelfImprover`` is the shared machinery of the methods that learn from their own traces
(expert iteration, policy gradient, AlphaZero): the reward-and-objective network and its
trainer, the policy's optimiser, the random streams, and the ``learn`` skeleton written
once: remember -> reward-net updates -> the method's policy updates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Optional, Protocol, Sequence

import numpy as np
import torch

from emergent import tags

from .model import TransformerLM
from .records import Experience, Prompts, Replay, StepResult, Trace
from .reward_net import RewardNet
from .reward_trainer import RewardTrainer, near_misses, split_heldout
from .rollouts import Rollouts, majority_labels, sample_rollouts
from .trainer import Trainer, Update

LABEL_SOURCES = ("verifier", "reward_net", "majority_vote")
REWARD_SOURCES = ("verifier", "reward_net")
BASELINES = ("group", "value")
LEARN_FROM = ("expert", "all", "solved")


@dataclass
class ImproveConfig:
    """``improve.*``: the self-improvement methods (which method reads which key: each
    method's ``reads``)."""

    problems_per_iter: int = 32
    samples: int = 8  # traces per problem (expert_iteration N, policy_gradient group)
    temperature: float = 1.0
    label_source: str = "verifier"  # expert_iteration: verifier | reward_net | majority_vote
    reward_source: str = "verifier"  # policy_gradient: verifier | reward_net
    baseline: str = "group"  # policy_gradient: group mean (GRPO/RLOO) | value (reward net)
    kl_coef: float = 0.0  # policy_gradient: KL(policy || starting policy) penalty
    replay_size: int = 2048  # expert_iteration / alphazero: traces kept for updates
    train_batch: int = 64  # expert_iteration / alphazero: traces per update
    updates_per_iter: int = 1  # policy steps per iteration (policy_gradient: clipped steps on one batch)
    clip_ratio: float = 0.2  # policy_gradient: PPO/GRPO clip of the probability ratio (acts from the 2nd step)
    init_from: Optional[str] = None  # a checkpoint to start from (e.g. a supervised run)
    # alphazero: expert = the search as the expert (Anthony et al. 2017): maximum likelihood of
    # the searched traces the verifier accepted, plus KL(improved policy || policy on its
    # support) at the informative moves only (a verdict lies below some root child); all =
    # cross-entropy to the improved policy at every searched move of every trace (AlphaZero
    # as first built); solved = the maximum-likelihood half of expert alone
    learn_from: str = "expert"
    # alphazero: k sampled traces per problem first (expert iteration's), the search only for
    # the problems none of them solved; 0 searches every problem
    sample_first: int = 0

    def validate(self) -> None:
        for key, value, choices in (
            ("label_source", self.label_source, LABEL_SOURCES),
            ("reward_source", self.reward_source, REWARD_SOURCES),
            ("baseline", self.baseline, BASELINES),
            ("learn_from", self.learn_from, LEARN_FROM),
        ):
            if value not in choices:
                raise ValueError(f"improve.{key}={value!r} is not valid; choose one of {list(choices)}")
        if self.sample_first < 0:
            raise ValueError("improve.sample_first must be >= 0")
        if self.problems_per_iter < 1 or self.samples < 1 or self.updates_per_iter < 1:
            raise ValueError("improve.problems_per_iter, improve.samples and improve.updates_per_iter must be >= 1")
        if self.temperature <= 0:
            raise ValueError("improve.temperature must be > 0 (sampling)")
        if not 0 < self.clip_ratio < 1:
            raise ValueError(f"improve.clip_ratio must lie in (0, 1), got {self.clip_ratio}")


class Method(Protocol):
    """What a runtime sees of a learner. ``cfg`` (the run's config) is read at construction."""

    name: ClassVar[str]
    reads: ClassVar[tuple[str, ...]]
    demonstrations: Optional[str]
    problems_per_step: int
    policy: TransformerLM
    reward_net: Optional[RewardNet]  # None: the method has none (search eval then values leaves at 0.5)
    reward_trainer: Optional[RewardTrainer]  # its trainer and replay of labelled traces, with the network
    replay: Optional[Replay]  # the policy's replay, where the method keeps one

    def collect(self, batch: Prompts) -> Experience: ...
    def learn(self, experience: Experience) -> StepResult: ...
    def networks(self) -> dict[str, torch.nn.Module]: ...
    def reseed(self, seed: int, stream: int = 0) -> None: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


METHODS: dict[str, type] = {}


def register_method(cls: type) -> type:
    METHODS[cls.name] = cls
    return cls


def build_method(cfg: Any, policy: TransformerLM, device: torch.device) -> Method:
    """The method ``cfg.train.method`` names, over ``policy``, configured by ``cfg``."""
    return METHODS[cfg.train.method](policy, cfg, device)


def reads_key(method: str, key: str) -> bool:
    """Whether ``method`` reads config key ``key`` (a ``section.*`` entry covers the section)."""
    return any(key == r or (r.endswith(".*") and key.startswith(r[:-1])) for r in METHODS[method].reads)


def last_update(updates: Sequence[Update]) -> dict:
    """The fields of a StepResult that describe the last policy step, if any was taken."""
    if not updates:
        return {}
    u = updates[-1]
    return {"loss": u.loss, "lr": u.lr, "grad_norm": u.grad_norm}


class SelfImprover:
    """Shared machinery of the methods that learn from their own traces."""

    demonstrations = None  # never: answers reach a self-improver only as the verifier's verdicts
    # what every self-improver reads beyond the shared keys (each adds its own)
    reads: ClassVar[tuple[str, ...]] = (
        "improve.problems_per_iter",
        "improve.updates_per_iter",
        "improve.init_from",
        "reward.*",
    )

    def __init__(self, policy: TransformerLM, cfg: Any, device: torch.device) -> None:
        icfg = cfg.improve
        icfg.validate()
        self.policy, self.cfg, self.device = policy, icfg, device
        self.problems_per_step = icfg.problems_per_iter
        self.step_labels = bool(cfg.reward.step_labels)  # a process reward: the step checker's labels too
        self.reward_net = RewardNet.for_policy(policy, cfg.reward, step_head=self.step_labels)
        self.trainer = Trainer(policy, cfg.optim, cfg.train.steps * icfg.updates_per_iter, device)
        self.reward_trainer = RewardTrainer(self.reward_net, cfg.reward, cfg.train.steps, device)
        self.heldout_fraction = cfg.reward.heldout_fraction
        self.reward_rollouts = cfg.reward.rollouts
        self.reward_near_misses = cfg.reward.near_misses
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

    # -- collection (no parameter changes) ----------------------------------------------------
    def judge(self, ro: Rollouts, batch: Prompts, *, vote: bool, source: str) -> tuple[np.ndarray, np.ndarray, float]:
        """Labels of sampled traces by the verifier (or, ``vote``, by majority vote, never
        calling it) and the scores the update uses (``source``: the labels, or the reward
        net's P(correct)). Returns (labels [R], scores [R], reward-net FLOPs)."""
        labels = (
            majority_labels(ro.rows, ro.completions) if vote else batch.verify(ro.rows, ro.completions).astype(float)
        )
        if source != "reward_net":
            return labels, labels, 0.0
        scores, flops = self.reward_trainer.score(ro.prompts, ro.completions)
        return labels, scores, flops

    def make_experience(
        self, batch: Prompts, rows, completions, finished, labels, scores, flops: dict, **fields
    ) -> Experience:
        """The batch's Experience: a random share of its traces is held out of reward-net
        training and scored now, for the diagnostics."""
        heldout = split_heldout(len(rows), self.heldout_fraction, self.collect_rng)
        held = np.flatnonzero(heldout)
        probs, process = np.zeros(0), None
        if len(held):
            probs, f = self.reward_trainer.score([batch.prompts[rows[i]] for i in held], [completions[i] for i in held])
            flops[tags.REWARD] = flops.get(tags.REWARD, 0.0) + f
            if self.step_labels:  # the process reward's ranking, beside the value head's
                process, f = self.reward_trainer.process_scores(
                    [batch.prompts[rows[i]] for i in held], [completions[i] for i in held]
                )
                flops[tags.REWARD] += f
        extra = self.reward_traces(batch, flops) if self.reward_rollouts else ()
        if self.reward_near_misses:
            extra += self.near_miss_traces(
                batch, np.asarray(rows), completions, np.asarray(finished, dtype=bool), ~heldout
            )
        steps = None
        if self.step_labels and batch.check_steps is not None:  # only the traces the reward net trains on
            train = np.flatnonzero(~heldout)
            judged = batch.check_steps(np.asarray(rows)[train], [completions[i] for i in train])
            steps = [None] * len(rows)
            for i, judged_steps in zip(train.tolist(), judged):
                steps[i] = tuple(bool(y) for y in judged_steps)
        return Experience(
            list(batch.prompts),
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

    def reward_traces(self, batch: Prompts, flops: dict) -> tuple[Trace, ...]:
        """``reward.rollouts`` sampled traces per problem for the reward net alone, labelled
        as the method labels its own (by the verifier; by majority vote where the method
        votes, never calling the verifier). Their generation is counted in ``flops``."""
        ro = sample_rollouts(
            self.policy,
            batch.prompts,
            self.reward_rollouts,
            temperature=1.0,
            generator=self.generator,
            device=self.device,
        )
        flops[tags.GENERATE] = flops.get(tags.GENERATE, 0.0) + ro.flops
        labels, _, _ = self.judge(ro, batch, vote=self.cfg.label_source == "majority_vote", source="verifier")
        return tuple(Trace(p, c, float(y)) for p, c, y in zip(ro.prompts, ro.completions, labels * ro.finished))

    def near_miss_traces(
        self, batch: Prompts, rows: np.ndarray, completions: Sequence[str], finished: np.ndarray, train: np.ndarray
    ) -> tuple[Trace, ...]:
        """``reward.near_misses`` copies of each trace the reward net trains on (``train`` [R]
        bool), one digit changed, labelled by the verifier (a copy of an unfinished trace
        stays unfinished: label 0)."""
        keep = np.flatnonzero(train)
        src, copies = near_misses([completions[i] for i in keep], self.reward_near_misses, self.collect_rng)
        if not copies:
            return ()
        at = keep[src]
        labels = batch.verify(rows[at], copies).astype(float) * finished[at]
        return tuple(Trace(batch.prompts[r], c, float(y)) for r, c, y in zip(rows[at], copies, labels))

    # -- learning ---------------------------------------------------------------------------------
    def learn(self, experience: Experience) -> StepResult:
        """remember -> reward-net updates -> the method's policy updates."""
        self.remember(experience)
        reward_flops, reward_scalars = self.reward_trainer.update(experience, self.learn_rng)
        updates, scalars = self.improve(experience)
        flops = {tags.REWARD: reward_flops, tags.TRAIN: sum(u.flops for u in updates)}
        solved = len(np.unique(experience.rows[experience.finished & (experience.labels >= 0.5)]))
        if solved:  # by the verifier's labels (under a vote, by agreement: what the method can see)
            scalars = {
                **scalars,
                tags.TRAIN_FLOPS_PER_SOLVED: (sum(experience.flops.values()) + sum(flops.values())) / solved,
            }
        return StepResult(
            flops=flops,
            tokens=sum(u.tokens for u in updates),
            **last_update(updates),
            scalars={**scalars, **reward_scalars},
            heldout=(experience.heldout_probs, experience.labels[experience.heldout]),
            heldout_process=experience.heldout_process,
            accuracy=experience.problem_accuracy(),
        )

    def remember(self, experience: Experience) -> None:
        """Add what the method replays from this batch to ``self.replay`` (default: nothing)."""

    def improve(self, experience: Experience) -> tuple[list[Update], dict[str, float]]:
        """The method's policy updates on this batch (and its replay); their own scalars."""
        raise NotImplementedError

    # -- state ------------------------------------------------------------------------------------
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
