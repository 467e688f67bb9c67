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

What the methods that learn from their own traces share (expert iteration, policy gradient,
AlphaZero) is in ``self_improvement.py``: the state they hold and the steps their own
``collect`` and ``learn`` call, in order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Optional, Protocol, Sequence

import torch

from .model import TransformerLM
from .records import Experience, Prompts, Replay, StepResult
from .reward_net import RewardNet
from .reward_trainer import RewardTrainer
from .trainer import Update

if TYPE_CHECKING:  # sections.py imports this module's ImproveConfig
    from .sections import MethodConfig

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
    """What a runtime sees of a learner, built by ``build_method`` from its typed sections
    (``MethodConfig``), read at construction."""

    name: ClassVar[str]
    reads: ClassVar[tuple[str, ...]]
    demonstrations: Optional[str]
    problems_per_step: int
    policy: TransformerLM
    reward_net: Optional[RewardNet]  # None: the method has none (search eval then values leaves at 0.5)
    reward_trainer: Optional[RewardTrainer]  # its trainer and replay of labelled traces, with the network
    replay: Optional[Replay]  # the policy's replay, where the method keeps one

    def collect(self, problems: Prompts) -> Experience: ...
    def learn(self, experience: Experience) -> StepResult: ...
    def networks(self) -> dict[str, torch.nn.Module]: ...
    def reseed(self, seed: int, stream: int = 0) -> None: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


METHODS: dict[str, type] = {}


def register_method(cls: type) -> type:
    METHODS[cls.name] = cls
    return cls


def build_method(cfg: "MethodConfig", policy: TransformerLM, device: torch.device) -> Method:
    """The method ``cfg.method`` names, over ``policy``, built from the typed sections ``cfg``
    (agents/sections.py), never from the platform's whole config."""
    return METHODS[cfg.method](policy, cfg, device)


def reads_key(method: str, key: str) -> bool:
    """Whether ``method`` reads config key ``key`` (a ``section.*`` entry covers the section)."""
    return any(key == r or (r.endswith(".*") and key.startswith(r[:-1])) for r in METHODS[method].reads)


def last_update(updates: Sequence[Update]) -> dict:
    """The fields of a StepResult that describe the last policy step, if any was taken."""
    if not updates:
        return {}
    u = updates[-1]
    return {"loss": u.loss, "lr": u.lr, "grad_norm": u.grad_norm}
