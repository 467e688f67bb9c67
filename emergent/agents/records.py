"""The records that cross the method boundary, and the one replay every method uses.

A runtime hands a method ``Prompts`` and gets an ``Experience`` back from ``collect``
(on a trace worker under Ray), then hands that to ``learn`` and gets a ``StepResult``.
All three are frozen: complete when made, never patched afterwards. Shapes: P problems
in the batch, R traces, H of them held out of reward-net training.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional, Protocol, Sequence

import numpy as np
import torch


class Verifier(Protocol):
    """Exact correctness (0/1) of completions of this batch's problems; rows index them."""

    def __call__(self, rows: np.ndarray, completions: Sequence[str]) -> np.ndarray: ...


class StepChecker(Protocol):
    """Each completion's scratchpad steps judged one by one: [R] arrays of [steps] bool."""

    def __call__(self, rows: np.ndarray, completions: Sequence[str]) -> list[np.ndarray]: ...


class StepDriller(Protocol):
    """One drill per row for the step checker (``Task.drill_steps``): [D] completions."""

    def __call__(self, rows: np.ndarray, rng: np.random.Generator) -> list[str]: ...


@dataclass(frozen=True)
class Prompts:
    """One batch of training problems, as a method sees them: prompts and a verifier.

    ``gold`` (the gold traces or answers) is filled only for a method that declares it
    learns from demonstrations (``Method.demonstrations``): a self-improver never gets it.
    """

    prompts: list[str]  # [P]
    verify: Verifier
    gold: Optional[list[str]] = None  # [P]
    # the task's step checker under task.check_steps (a process reward's labels); else None
    check_steps: Optional[StepChecker] = None
    # the task's step drills (reward.step_drills), where it writes them; else None
    drill_steps: Optional[StepDriller] = None


@dataclass(frozen=True)
class Experience:
    """One batch of traces, judged and scored: everything ``learn`` needs.

    Supervised experience is the gold demonstrations themselves (one finished, correct
    trace per problem, nothing held out).
    """

    prompts: list[str]  # [P] this batch's problems
    rows: np.ndarray  # [R] problem index of each trace
    completions: list[str]  # [R] EOS excluded
    finished: np.ndarray  # [R] bool: wrote EOS
    labels: np.ndarray  # [R] verifier outcome (majority agreement under a vote)
    scores: np.ndarray  # [R] the signal the update uses: labels or the reward net's P(correct)
    heldout: np.ndarray  # [R] bool: never trained on by the reward net
    heldout_probs: np.ndarray  # [H] the reward net's P(correct) of the held-out traces
    flops: Mapping[str, float]  # ledger part -> FLOPs spent collecting
    scalars: Mapping[str, float] = field(default_factory=dict)  # tags measured while collecting
    # what one method alone reads, as a record its own module defines (policy gradient's
    # ValueBaseline, alphazero's SearchTargets); None for the others
    payload: Any = None
    reward_traces: tuple = ()  # labelled Traces only the reward net learns from (reward.rollouts)
    # [H] a process reward's score of the held-out traces (reward.step_labels), else None
    heldout_process: Optional[np.ndarray] = None
    # [R] each trace's step labels ([steps] bool) for the reward net's step head; None: not asked
    steps: Optional[list] = None

    @property
    def size(self) -> int:
        return len(self.rows)

    @property
    def accepted(self) -> np.ndarray:
        """[R] bool: finished and judged correct (score >= 0.5)."""
        return self.finished & (self.scores >= 0.5)

    @property
    def prompt_of(self) -> list[str]:
        """[R] each trace's prompt."""
        return [self.prompts[r] for r in self.rows]

    def problem_accuracy(self) -> np.ndarray:
        """[P] each problem's share of traces labelled correct."""
        P = len(self.prompts)
        return np.bincount(self.rows, weights=self.labels, minlength=P) / np.bincount(self.rows, minlength=P).clip(
            min=1
        )


@dataclass(frozen=True)
class StepResult:
    """What one ``learn`` call did. Tensors stay on the device: reading them syncs a GPU,
    so the runtime reads them once per logging window."""

    flops: Mapping[str, float]  # ledger part -> FLOPs spent learning
    tokens: int = 0  # tokens the policy trained on
    loss: Optional[torch.Tensor] = None  # 0-d; None when no policy step was taken
    lr: Optional[float] = None
    grad_norm: Optional[torch.Tensor] = None  # 0-d
    scalars: Mapping[str, float] = field(default_factory=dict)  # the method's own tags
    heldout: Optional[tuple[np.ndarray, np.ndarray]] = None  # reward-net P(correct) and labels, [H] each
    heldout_process: Optional[np.ndarray] = None  # [H] the process reward's scores of the same traces
    accuracy: Optional[object] = None  # [P] training accuracy per problem (tensor or array): a curriculum's signal


# -- replay -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Trace:
    """One remembered trace."""

    prompt: str
    completion: str
    label: float = 1.0  # verifier outcome (or vote agreement)
    target: Optional[torch.Tensor] = None  # alphazero: improved policy per move [moves, V]
    steps: Optional[tuple] = None  # the reward net's step labels: each scratchpad step true or not
    value: bool = True  # trains the value head; False: a step drill, for the step head alone


class Replay:
    """The most recent ``capacity`` traces; updates draw from it uniformly, with replacement."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.items: list[Trace] = []  # most recent last

    def __len__(self) -> int:
        return len(self.items)

    def add(self, traces: Iterable[Trace]) -> None:
        self.items += list(traces)
        self.items = self.items[-self.capacity :]

    def sample(self, rng: np.random.Generator, n: int) -> list[Trace]:
        """``min(n, len)`` draws; the caller checks the replay is not empty."""
        pick = rng.integers(len(self.items), size=min(n, len(self.items)))
        return [self.items[i] for i in pick]

    def state_dict(self) -> list:
        # plain lists of str / float / tensor / None: readable by torch.load(weights_only=True)
        return [[t.prompt, t.completion, t.label, t.target, t.steps, t.value] for t in self.items]

    def load_state_dict(self, state: list) -> None:
        self.items = [Trace(*row) for row in state]  # from before step labels: 4 fields; before drills: 5
