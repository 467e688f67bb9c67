"""The stream of training problems a learner consumes, seeded and resumable."""
from __future__ import annotations

from typing import Callable

import numpy as np

from emergent.envs import Problem, SplitSpec, Task


class ProblemStream:
    """Training problems: fresh draws from the train split, or draws from a fixed set.

    With ``train_size`` set, the set itself depends only on ``data_seed`` (every run seed
    sees the same data); the order in which it is visited depends on ``seed``.
    """

    def __init__(self, task: Task, splits: SplitSpec, *, seed: int, train_size: int | None, data_seed: int = 0):
        self.task, self.difficulties = task, splits.difficulties("train")
        self.rng = np.random.default_rng([seed, 0])
        self.fixed: list[Problem] | None = None
        self.too_long = 0  # fresh draws skipped because they do not fit the context
        if train_size is not None:
            self.fixed = task.sample(np.random.default_rng([data_seed, 1]), train_size, "train", self.difficulties)

    def next(self, n: int, fits: Callable[[Problem], bool] | None = None) -> list[Problem]:
        """``n`` problems; with ``fits``, fresh draws that fail it are replaced (and counted
        in ``too_long``). A fixed set was checked whole before training."""
        if self.fixed is not None:
            return [self.fixed[i] for i in self.rng.integers(len(self.fixed), size=n)]
        out: list[Problem] = []
        while len(out) < n:
            drawn = self.task.sample(self.rng, n - len(out), "train", self.difficulties)
            kept = [p for p in drawn if fits is None or fits(p)]
            self.too_long += len(drawn) - len(kept)
            out += kept
        return out

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state, "too_long": self.too_long}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.too_long = int(state.get("too_long", 0))
