"""Sort a list of integers in 0..99 ascending; difficulty = list length.

"52,7,31,7=" -> "7,7,31,52"
"""

from __future__ import annotations

import numpy as np

from .base import Problem, Task, register_task


@register_task
class Sorting(Task):
    name = "sorting"
    difficulty_label = "list length"
    max_difficulty = 30

    def make_problem(self, rng: np.random.Generator, difficulty: int) -> Problem:
        values = rng.integers(0, 100, size=difficulty)
        answer = ",".join(map(str, np.sort(values)))
        return Problem(prompt=",".join(map(str, values)) + "=", answer=answer, trace=answer, difficulty=difficulty)
