"""The stream of training problems a learner consumes, seeded and resumable."""

from __future__ import annotations

from typing import Callable

import numpy as np

from emergent.envs import Problem, SplitSpec, Task


class ProblemStream:
    """Training problems: fresh draws from the train split, or draws from a fixed set.

    With ``train_size`` set, the set itself depends only on ``data_seed`` (every run seed
    sees the same data); the order in which it is visited depends on ``seed``.

    With a ``curriculum`` threshold, draws start at the lowest training difficulty; each
    time the training accuracy at the highest difficulty drawn so far reaches it, over
    ``window`` problems of that difficulty (``report``), the next difficulty joins.
    """

    def __init__(
        self,
        task: Task,
        splits: SplitSpec,
        *,
        seed: int,
        train_size: int | None,
        data_seed: int = 0,
        curriculum: float | None = None,
        window: int = 256,
    ):
        self.task, self.difficulties = task, splits.difficulties("train")
        self.rng = np.random.default_rng([seed, 0])
        self.fixed: list[Problem] | None = None
        self.too_long = 0  # fresh draws skipped because they do not fit the context
        self.curriculum, self.window = curriculum, window
        self.open = 1 if curriculum is not None else len(self.difficulties)  # difficulties drawn: the first `open`
        self._seen, self._correct = 0, 0.0  # outcomes at the top open difficulty, this window
        if train_size is not None:
            self.fixed = task.sample(np.random.default_rng([data_seed, 1]), train_size, "train", self.difficulties)
            self._fixed_difficulty = np.array([p.difficulty for p in self.fixed])

    @property
    def top(self) -> int:
        """The highest difficulty drawn now."""
        return self.difficulties[self.open - 1]

    def next(self, n: int, fits: Callable[[Problem], bool] | None = None) -> list[Problem]:
        """``n`` problems; with ``fits``, fresh draws that fail it are replaced (and counted
        in ``too_long``). A fixed set was checked whole before training."""
        if self.fixed is not None:
            pool = np.flatnonzero(self._fixed_difficulty <= self.top)  # all of it once every difficulty is open
            return [self.fixed[j] for j in pool[self.rng.integers(len(pool), size=n)]]
        out: list[Problem] = []
        while len(out) < n:
            drawn = self.task.sample(self.rng, n - len(out), "train", self.difficulties[: self.open])
            kept = [p for p in drawn if fits is None or fits(p)]
            self.too_long += len(drawn) - len(kept)
            out += kept
        return out

    def report(self, difficulties: np.ndarray, accuracy: np.ndarray) -> None:
        """Training accuracy (in [0, 1]) of problems just trained on, by difficulty: the
        curriculum's signal. Only problems at the top open difficulty count."""
        if self.curriculum is None or self.open == len(self.difficulties):
            return
        at_top = np.asarray(difficulties) == self.top
        self._seen += int(at_top.sum())
        self._correct += float(np.asarray(accuracy, dtype=float)[at_top].sum())
        if self._seen >= self.window:
            if self._correct / self._seen >= self.curriculum:
                self.open += 1
            self._seen, self._correct = 0, 0.0

    def draw_state(self) -> dict:
        """What ``next`` changes: restoring it draws the same problems again."""
        return {"rng": self.rng.bit_generator.state, "too_long": self.too_long}

    def state_dict(self) -> dict:
        return {**self.draw_state(), "open": self.open, "seen": self._seen, "correct": self._correct}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.too_long = int(state.get("too_long", 0))
        self.open = int(state.get("open", self.open))
        self._seen, self._correct = int(state.get("seen", 0)), float(state.get("correct", 0.0))
