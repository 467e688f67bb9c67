"""The stream of training problems a learner consumes, seeded and resumable."""
from __future__ import annotations

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
        if train_size is not None:
            self.fixed = task.sample(np.random.default_rng([data_seed, 1]), train_size, "train", self.difficulties)

    def next(self, n: int) -> list[Problem]:
        if self.fixed is not None:
            return [self.fixed[i] for i in self.rng.integers(len(self.fixed), size=n)]
        return self.task.sample(self.rng, n, "train", self.difficulties)

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
