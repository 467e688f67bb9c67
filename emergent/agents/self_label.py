"""Self-labelling rounds (Lee et al. 2025): a model extends its own training lengths.

Start from a supervised warm start on difficulties [1, n] (``improve.init_from``); the gold
of [1, n] stays in the data. Round r (every ``self_label.round_steps`` steps, the first at
step 0) draws ``self_label.problems`` fresh prompts one difficulty above the last round's
(n + r), answers them with the model's own greedy decoding, filters the answers, adds the
kept ones to a buffer that holds every round's labels, and the steps until the next round
train on batches of which ``self_label.share`` comes from that buffer and the rest is gold
of [1, n]. No gold answer above n ever reaches the model and no verifier is called, except:

  * ``filter=oracle``: the verifier keeps only the right labels (the oracle ablation, not
    the method: its rows are labelled as such);
  * ``self_label/label_accuracy``: the share of a round's labels that are right, measured
    against gold after the filter has run, logged, never fed back.

Filters: ``none`` keeps every label that ended with EOS (an unfinished label is no label);
``length`` also drops a label more than one character longer or shorter than the round's
commonest length (Lee's length filter for forward addition: a label too short has lost digits);
``vote`` keeps a label when at least ``vote_threshold`` of ``votes`` samples at
``vote_temperature`` give the same answer (Lee vote across models; here across samples of
one model); ``length+vote`` applies both. ``noise`` replaces that share of labels with a
wrong one (one digit changed) before the filter: the negative control, the "error avalanche"
of unfiltered self-labels.

Fast mode (``self_label.fast``, Lee's accelerated rounds): a round may add up to
``fast_max`` difficulties instead of one. It labels every difficulty from the last round's
+ 1 up to the longest one whose self-consistency is >= ``fast_threshold`` at it and at every
difficulty below it (one difficulty when even the next falls short), ``problems`` prompts
spread evenly over them. Self-consistency at a difficulty is the model's own estimate of its
accuracy there, with no gold: the share of ``fast_probes`` fresh prompts whose greedy answer
ended and is given by at least ``vote_threshold`` of ``votes`` samples at
``vote_temperature``. Its value at the round's top difficulty is logged
(``self_label/consistency``) beside the labels' accuracy against gold, so the log shows how
well the estimate tracks the truth.

The labelling costs generation FLOPs (``compute/generate_flops``); the learner step is
supervised's (``completion_nll``), so at equal FLOPs the method differs from supervised
only in what it trains on.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from emergent import tags
from emergent.envs import TOKENIZER, extract_answer, make_task

from .method import register_method
from .model import TransformerLM
from .records import Experience, Prompts, StepResult
from .rollouts import sample_rollouts
from .sections import MethodConfig
from .supervised import completion_nll, gold_experience
from .token_batch import encode_batch
from .trainer import Trainer

FILTERS = ("none", "length", "vote", "oracle")


@dataclass
class SelfLabelConfig:
    """``self_label.*``: train.method=self_label (see ``agents/self_label.py``)."""

    round_steps: int = 500  # training steps per round (a round adds one difficulty)
    problems: int = 1024  # fresh prompts labelled per round
    share: float = 0.5  # share of each batch from the self-labelled buffer (the rest: gold of [1, n])
    filter: str = "none"  # none | length | vote | length+vote | oracle (the ablation: the verifier)
    votes: int = 5  # filter=vote: samples per prompt
    vote_threshold: float = 0.7  # filter=vote: share of the samples that must give the label's answer
    vote_temperature: float = 1.0
    noise: float = 0.0  # share of labels replaced by a wrong one before the filter (negative control)
    fast: bool = False  # a round labels up to the longest self-consistent difficulty (module docstring)
    fast_max: int = 4  # fast: the most difficulties one round adds
    fast_threshold: float = 0.99  # fast: the self-consistency a difficulty needs to be labelled beyond the next
    fast_probes: int = 64  # fast: fresh prompts per candidate difficulty for its self-consistency

    def validate(self) -> None:
        if not self.filter or any(f not in FILTERS for f in self.filter.split("+")):
            raise ValueError(
                f"self_label.filter={self.filter!r} is not valid; choose one of {list(FILTERS)}, "
                f"or several joined by '+'"
            )
        for key in ("round_steps", "problems", "votes", "fast_max", "fast_probes"):
            if getattr(self, key) < 1:
                raise ValueError(f"self_label.{key} must be >= 1, got {getattr(self, key)}")
        for key in ("share", "vote_threshold", "noise", "fast_threshold"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ValueError(f"self_label.{key} must lie in [0, 1], got {getattr(self, key)}")
        if not self.vote_temperature > 0:
            raise ValueError(f"self_label.vote_temperature must be > 0, got {self.vote_temperature}")


def corrupt(label: str, rng: np.random.Generator) -> str:
    """``label`` with one digit changed to another digit (a label without digits: a '0' appended)."""
    at = [i for i, c in enumerate(label) if c.isdigit()]
    if not at:
        return label + "0"
    i = at[rng.integers(len(at))]
    new = str((int(label[i]) + 1 + rng.integers(9)) % 10)
    return label[:i] + new + label[i + 1 :]


def agreement(labels: list[str], votes: list[list[str]]) -> np.ndarray:
    """[P]: the share of each prompt's sampled answers that give its label's answer."""
    answers = [extract_answer(s) for s in labels]
    return np.array([sum(a == v for v in vs) / max(1, len(vs)) for a, vs in zip(answers, votes)])


def keep_labels(
    filter_: str,
    labels: list[str],
    finished: np.ndarray,
    *,
    votes: list[list[str]] | None = None,
    threshold: float = 0.7,
    right: np.ndarray | None = None,
    difficulty: np.ndarray | None = None,
) -> np.ndarray:
    """[P] bool: which of the round's labels join the buffer (see the module's docstring).
    ``votes``: per prompt the sampled answers (filter=vote); ``right``: the verifier's
    verdicts (filter=oracle); ``difficulty`` [P]: each prompt's (the length filter finds the
    commonest length per difficulty: a fast round labels several)."""
    keep = np.asarray(finished, dtype=bool).copy()
    filters = filter_.split("+")
    if "length" in filters:
        lengths = np.array([len(s) for s in labels])
        groups = np.zeros(len(labels), int) if difficulty is None else np.asarray(difficulty)
        for g in np.unique(groups):
            at = groups == g
            if (keep & at).any():
                common = Counter(lengths[keep & at].tolist()).most_common(1)[0][0]
                keep &= ~at | (np.abs(lengths - common) <= 1)
    if "vote" in filters:
        keep &= agreement(labels, votes) >= threshold
    if "oracle" in filters:
        keep &= np.asarray(right, dtype=bool)
    return keep


@register_method
class SelfLabel:
    name = "self_label"
    reads: ClassVar[tuple[str, ...]] = ("train.batch_size", "train.target", "improve.init_from", "self_label.*")
    reward_net = None
    reward_trainer = None
    replay = None

    def __init__(self, policy: TransformerLM, cfg: MethodConfig, device: torch.device) -> None:
        self.policy, self.device, self.cfg = policy, device, cfg.self_label
        self.demonstrations = cfg.train.target  # the gold of [1, n], from the platform's stream
        self.batch_size = cfg.train.batch_size
        self.problems_per_step = max(1, round(cfg.train.batch_size * (1 - self.cfg.share)))
        self.trainer = Trainer(policy, cfg.optim, cfg.train.steps, device)
        t = cfg.task  # the task again, to draw prompts above n (never to read their answers: see label_round)
        self.task = make_task(t.name, format=t.format, heldout_fraction=t.heldout_fraction, check_steps=t.check_steps)
        self.top = int(cfg.task.difficulty[1])  # n: the longest gold the method sees
        self.steps = 0
        self.round = 0
        self.reached = self.top  # the highest difficulty labelled so far
        self.buffer: list[tuple[str, str]] = []  # (prompt, label) of every round
        self.rng = np.random.default_rng([cfg.seed, 7])
        self.generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + 7)
        self.last: dict[str, float] = {}  # the latest round's diagnostics, logged every step

    def networks(self) -> dict[str, torch.nn.Module]:
        return {}  # collect hands over gold; labelling happens in learn, with the learner's weights

    def reseed(self, seed: int, stream: int = 0) -> None:
        """Nothing is drawn in collect."""

    @property
    def difficulty(self) -> int:
        """The highest difficulty labelled so far (n before the first round)."""
        return self.reached

    def collect(self, problems: Prompts) -> Experience:
        return gold_experience(problems)  # the gold of [1, n]; the labels join in learn

    def sample_votes(self, prompts: list[str]) -> tuple[list[list[str]], float]:
        """Per prompt the answers of ``votes`` samples at ``vote_temperature``, and their FLOPs."""
        c = self.cfg
        drawn = sample_rollouts(
            self.policy, prompts, c.votes, temperature=c.vote_temperature, generator=self.generator, device=self.device
        )
        answers = [extract_answer(s) for s in drawn.completions]
        return [answers[i * c.votes : (i + 1) * c.votes] for i in range(len(prompts))], drawn.flops

    def round_difficulties(self) -> tuple[list[int], float, float]:
        """The difficulties this round labels, the self-consistency at its top (nan without
        fast mode) and the FLOPs spent finding them. Without fast mode: the next one."""
        c, top = self.cfg, self.task.max_difficulty
        if not c.fast or self.reached >= top:
            return [min(self.reached + 1, top)], float("nan"), 0.0
        candidates = list(range(self.reached + 1, min(self.reached + c.fast_max, top) + 1))
        probes = [self.task.make_problem(self.rng, d).prompt for d in candidates for _ in range(c.fast_probes)]
        greedy = sample_rollouts(self.policy, probes, 1, temperature=0.0, generator=None, device=self.device)
        votes, flops = self.sample_votes(probes)
        agreed = np.asarray(greedy.finished, bool) & (agreement(list(greedy.completions), votes) >= c.vote_threshold)
        consistency = agreed.reshape(len(candidates), c.fast_probes).mean(axis=1)  # [candidates]
        reach = 1  # the next difficulty always; further ones while every one up to them is consistent
        while reach < len(candidates) and consistency[: reach + 1].min() >= c.fast_threshold:
            reach += 1
        return candidates[:reach], float(consistency[reach - 1]), greedy.flops + flops

    @torch.no_grad()
    def label_round(self) -> float:
        """A new round: label fresh prompts one difficulty up (fast mode: up to several),
        filter, add. Returns its FLOPs."""
        self.round += 1
        c, filters = self.cfg, self.cfg.filter.split("+")
        levels, consistency, flops = self.round_difficulties()
        difficulty = np.array([levels[i % len(levels)] for i in range(c.problems)])  # spread evenly, no draw
        problems = [self.task.make_problem(self.rng, int(d)) for d in difficulty]
        prompts = [p.prompt for p in problems]  # the answers stay in `problems`, read only below the filter
        greedy = sample_rollouts(self.policy, prompts, 1, temperature=0.0, generator=None, device=self.device)
        labels, flops = list(greedy.completions), flops + greedy.flops
        noisy = self.rng.random(len(labels)) < c.noise
        labels = [corrupt(s, self.rng) if n else s for s, n in zip(labels, noisy)]
        votes = None
        if "vote" in filters:
            votes, vote_flops = self.sample_votes(prompts)
            flops += vote_flops
        # against gold: for the log, and for the oracle ablation's filter alone (the method never reads it)
        correct = self.task.verify_batch(problems, labels).exact
        keep = keep_labels(
            c.filter,
            labels,
            greedy.finished,
            votes=votes,
            threshold=c.vote_threshold,
            right=correct if "oracle" in filters else None,
            difficulty=difficulty,
        )
        self.buffer += [(prompts[i], labels[i]) for i in np.flatnonzero(keep)]
        self.reached = levels[-1]
        self.last = {
            tags.SELF_LABEL_ROUND: float(self.round),
            tags.SELF_LABEL_DIFFICULTY: float(self.reached),
            tags.SELF_LABEL_KEPT: float(keep.mean()),
            tags.SELF_LABEL_BUFFER: float(len(self.buffer)),
            tags.SELF_LABEL_ACCURACY: float(correct.mean()),
            tags.SELF_LABEL_KEPT_ACCURACY: float(correct[keep].mean()) if keep.any() else 0.0,
        }
        if c.fast:
            self.last[tags.SELF_LABEL_CONSISTENCY] = consistency
        return flops

    def learn(self, experience: Experience) -> StepResult:
        flops = {}
        if self.steps % self.cfg.round_steps == 0:
            flops[tags.GENERATE] = self.label_round()
        self.steps += 1
        prompts, completions = list(experience.prompts), list(experience.completions)
        extra = self.batch_size - len(prompts)
        if self.buffer and extra > 0:
            for i in self.rng.integers(len(self.buffer), size=extra):
                prompts.append(self.buffer[i][0])
                completions.append(self.buffer[i][1])
        batch = encode_batch(TOKENIZER, prompts, completions, self.policy.cfg.max_len).to(self.device)
        u = self.trainer.step_batch(lambda b: completion_nll(self.policy, b), batch)
        return StepResult(
            flops={**flops, tags.TRAIN: u.flops},
            tokens=u.tokens,
            loss=u.loss,
            lr=u.lr,
            grad_norm=u.grad_norm,
            scalars=dict(self.last),
        )

    def state_dict(self) -> dict:
        return {
            "learner": self.trainer.state_dict(),  # the key checkpoints have always used
            "steps": self.steps,
            "round": self.round,
            "reached": self.reached,
            "buffer": list(self.buffer),
            "last": dict(self.last),
            "rng": self.rng.bit_generator.state,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.trainer.load_state_dict(state["learner"])
        self.steps, self.round, self.reached = int(state["steps"]), int(state["round"]), int(state["reached"])
        self.buffer = [tuple(x) for x in state["buffer"]]
        self.last = dict(state["last"])
        self.rng.bit_generator.state = state["rng"]
        self.generator.set_state(state["generator"])
