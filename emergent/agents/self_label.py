"""Self-labelling rounds (Lee et al. 2025): a model extends its own training lengths.

Start from a supervised warm start on difficulties [1, n] (``improve.init_from``); the gold
of [1, n] stays in the data. Round r (every ``self_label.round_steps`` steps, the first at
step 0) draws ``self_label.problems`` fresh prompts of difficulty n + r, answers them with
the model's own greedy decoding, filters the answers, adds the kept ones to a buffer that
holds every round's labels, and the steps until the next round train on batches of which
``self_label.share`` comes from that buffer and the rest is gold of [1, n]. No gold answer
above n ever reaches the model and no verifier is called, except:

  * ``filter=oracle``: the verifier keeps only the right labels (the oracle ablation, not
    the method: its rows are labelled as such);
  * ``self_label/label_accuracy``: the share of a round's labels that are right, measured
    against gold after the filter has run, logged, never fed back.

Filters: ``none`` keeps every label that ended with EOS (an unfinished label is no label);
``length`` also drops a label more than one character longer or shorter than the round's
commonest length (Lee's length filter for forward addition: a label too short has lost digits);
``vote`` keeps a label when at least ``vote_threshold`` of ``votes`` samples at
``vote_temperature`` give the same answer (Lee vote across models; here across samples of
one model); ``length+vote`` applies both. ``noise`` replaces that share of labels with a wrong one (one digit changed) before the
filter: the negative control, the "error avalanche" of unfiltered self-labels.

The labelling costs generation FLOPs (``compute/generate_flops``); the learner step is
supervised's (``completion_nll``), so at equal FLOPs the method differs from supervised
only in what it trains on.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from emergent import tags
from emergent.envs import TOKENIZER, extract_answer, make_task

from .learner import Learner
from .method import register_method
from .model import TransformerLM
from .records import Experience, Prompts, StepResult
from .rollouts import sample_rollouts
from .supervised import completion_nll, gold_experience
from .token_batch import encode_batch

FILTERS = ("none", "length", "vote", "oracle")


@dataclass
class SelfLabelConfig:
    """``self_label.*``: train.method=self_label (see ``agents/self_label.py``)."""
    round_steps: int = 500          # training steps per round (a round adds one difficulty)
    problems: int = 1024            # fresh prompts labelled per round
    share: float = 0.5              # share of each batch from the self-labelled buffer (the rest: gold of [1, n])
    filter: str = "none"            # none | length | vote | length+vote | oracle (the ablation: the verifier)
    votes: int = 5                  # filter=vote: samples per prompt
    vote_threshold: float = 0.7     # filter=vote: share of the samples that must give the label's answer
    vote_temperature: float = 1.0
    noise: float = 0.0              # share of labels replaced by a wrong one before the filter (negative control)

    def validate(self) -> None:
        if not self.filter or any(f not in FILTERS for f in self.filter.split("+")):
            raise ValueError(f"self_label.filter={self.filter!r} is not valid; choose one of {list(FILTERS)}, "
                             f"or several joined by '+'")
        if self.round_steps < 1 or self.problems < 1 or self.votes < 1:
            raise ValueError("self_label.round_steps, self_label.problems and self_label.votes must be >= 1")
        for key in ("share", "vote_threshold", "noise"):
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
    return label[:i] + new + label[i + 1:]


def keep_labels(filter_: str, labels: list[str], finished: np.ndarray, *, votes: list[list[str]] | None = None,
                threshold: float = 0.7, right: np.ndarray | None = None) -> np.ndarray:
    """[P] bool: which of the round's labels join the buffer (see the module's docstring).
    ``votes``: per prompt the sampled answers (filter=vote); ``right``: the verifier's
    verdicts (filter=oracle)."""
    keep = np.asarray(finished, dtype=bool).copy()
    filters = filter_.split("+")
    if "length" in filters and keep.any():
        lengths = np.array([len(s) for s in labels])
        common = Counter(lengths[keep].tolist()).most_common(1)[0][0]
        keep &= np.abs(lengths - common) <= 1
    if "vote" in filters:
        answers = [extract_answer(s) for s in labels]
        agree = np.array([sum(a == v for v in vs) / max(1, len(vs)) for a, vs in zip(answers, votes)])
        keep &= agree >= threshold
    if "oracle" in filters:
        keep &= np.asarray(right, dtype=bool)
    return keep


@register_method
class SelfLabel:
    name = "self_label"
    reads: ClassVar[tuple[str, ...]] = ("train.batch_size", "train.target", "improve.init_from", "self_label.*")
    reward_net = None
    reward = None
    replay = None

    def __init__(self, policy: TransformerLM, cfg: Any, device: torch.device) -> None:
        self.policy, self.device, self.cfg = policy, device, cfg.self_label
        self.demonstrations = cfg.train.target  # the gold of [1, n], from the platform's stream
        self.batch_size = cfg.train.batch_size
        self.problems_per_step = max(1, round(cfg.train.batch_size * (1 - self.cfg.share)))
        self.learner = Learner(policy, cfg.optim, cfg.train.steps, device)
        t = cfg.task  # the task again, to draw prompts above n (never to read their answers: see label_round)
        self.task = make_task(t.name, format=t.format, heldout_fraction=t.heldout_fraction, check_steps=t.check_steps)
        self.top = int(cfg.task.difficulty[1])  # n: the longest gold the method sees
        self.steps = 0
        self.round = 0
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
        """The difficulty this round labels: one above the gold, one more per round."""
        return min(self.top + self.round, self.task.max_difficulty)

    def collect(self, batch: Prompts) -> Experience:
        return gold_experience(batch)  # the gold of [1, n]; the labels join in learn

    @torch.no_grad()
    def label_round(self) -> float:
        """A new round: label fresh prompts one difficulty up, filter, add. Returns its FLOPs."""
        self.round += 1
        c, d, filters = self.cfg, self.difficulty, self.cfg.filter.split("+")
        problems = [self.task.make_problem(self.rng, d) for _ in range(c.problems)]
        prompts = [p.prompt for p in problems]  # the answers stay in `problems`, read only below the filter
        greedy = sample_rollouts(self.policy, prompts, 1, temperature=0.0, generator=None, device=self.device)
        labels, flops = list(greedy.completions), greedy.flops
        noisy = self.rng.random(len(labels)) < c.noise
        labels = [corrupt(s, self.rng) if n else s for s, n in zip(labels, noisy)]
        votes = None
        if "vote" in filters:
            drawn = sample_rollouts(self.policy, prompts, c.votes, temperature=c.vote_temperature,
                                    generator=self.generator, device=self.device)
            flops += drawn.flops
            answers = [extract_answer(s) for s in drawn.completions]
            votes = [answers[i * c.votes:(i + 1) * c.votes] for i in range(len(prompts))]
        # against gold: for the log, and for the oracle ablation's filter alone (the method never reads it)
        correct = self.task.verify_batch(problems, labels).exact
        keep = keep_labels(c.filter, labels, greedy.finished, votes=votes, threshold=c.vote_threshold,
                           right=correct if "oracle" in filters else None)
        self.buffer += [(prompts[i], labels[i]) for i in np.flatnonzero(keep)]
        self.last = {tags.SELF_LABEL_ROUND: float(self.round), tags.SELF_LABEL_DIFFICULTY: float(d),
                     tags.SELF_LABEL_KEPT: float(keep.mean()), tags.SELF_LABEL_BUFFER: float(len(self.buffer)),
                     tags.SELF_LABEL_ACCURACY: float(correct.mean()),
                     tags.SELF_LABEL_KEPT_ACCURACY: float(correct[keep].mean()) if keep.any() else 0.0}
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
        B, T = batch.inputs.shape
        u = self.learner.step(lambda b: completion_nll(self.policy, b), batch, tokens=B * T,
                              flops=self.policy.flops_per_token(T, backward=True) * B * T)
        return StepResult(flops={**flops, tags.TRAIN: u.flops}, tokens=u.tokens, loss=u.loss, lr=u.lr,
                          grad_norm=u.grad_norm, scalars=dict(self.last))

    def state_dict(self) -> dict:
        return {"learner": self.learner.state_dict(), "steps": self.steps, "round": self.round,
                "buffer": list(self.buffer), "last": dict(self.last), "rng": self.rng.bit_generator.state,
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.learner.load_state_dict(state["learner"])
        self.steps, self.round = int(state["steps"]), int(state["round"])
        self.buffer = [tuple(x) for x in state["buffer"]]
        self.last = dict(state["last"])
        self.rng.bit_generator.state = state["rng"]
        self.generator.set_state(state["generator"])
