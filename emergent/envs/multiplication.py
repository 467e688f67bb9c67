"""N-digit x M-digit multiplication with a scratchpad of partial products.

difficulty N sets the first operand's digits; the second has ``multiplier_digits``
digits (default: also N).

Formats:
  plain       "123*45=" -> "5535"
  reversed    "123*45=" -> "5355"
  scratchpad  "123*45=" -> "123*5=615,123*40=4920>5535"  (one partial product per
              digit of the multiplier, then the answer; zero digits are skipped)

Step checker (scratchpad): step i must multiply the multiplicand by the multiplier's i-th
non-zero digit in place (least significant first) and get the product right.
"""

from __future__ import annotations

import re

import numpy as np

from .addition import draw_operand
from .base import Problem, Task, register_task

_STEP = re.compile(r"(\d+)\*(\d+)=(\d+)")


def place_values(b: int) -> list[int]:
    """The multiplier's non-zero digits in place, least significant first ([0] for 0)."""
    return [int(d) * 10**i for i, d in enumerate(reversed(str(b))) if d != "0"] or [0]


@register_task
class Multiplication(Task):
    name = "multiplication"
    difficulty_label = "digits of the first operand"
    formats = ("scratchpad", "plain", "reversed")
    max_difficulty = 9

    def __init__(
        self,
        format: str | None = None,
        heldout_fraction: float = 0.1,
        check_steps: bool = False,
        multiplier_digits: int | None = None,
    ):
        super().__init__(format, heldout_fraction, check_steps)
        if multiplier_digits is not None and not 1 <= multiplier_digits <= self.max_difficulty:
            raise ValueError(f"multiplier_digits must lie in 1..{self.max_difficulty}, got {multiplier_digits}")
        self.multiplier_digits = multiplier_digits

    def make_problem(self, rng: np.random.Generator, difficulty: int) -> Problem:
        a = draw_operand(rng, difficulty)
        b = draw_operand(rng, self.multiplier_digits or difficulty)
        return self.problem(a, b, difficulty)

    def problem(self, a: int, b: int, difficulty: int) -> Problem:
        product = str(a * b)
        answer = product[::-1] if self.format == "reversed" else product
        trace = answer
        if self.format == "scratchpad":
            trace = ",".join(f"{a}*{shift}={a * shift}" for shift in place_values(b)) + ">" + answer
        return Problem(prompt=f"{a}*{b}=", answer=answer, trace=trace, difficulty=difficulty)

    def judge_steps(self, problem: Problem, steps: list[str]) -> list[bool]:
        a, b = (int(t) for t in problem.prompt.rstrip("=").split("*"))
        shifts = place_values(b)
        labels = []
        for i, step in enumerate(steps):
            m = _STEP.fullmatch(step)
            labels.append(
                m is not None
                and i < len(shifts)
                and int(m[1]) == a
                and int(m[2]) == shifts[i]
                and int(m[3]) == a * shifts[i]
            )
        return labels
