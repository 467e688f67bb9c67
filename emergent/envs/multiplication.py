"""N-digit x M-digit multiplication with a scratchpad of partial products.

difficulty N sets the first operand's digits; the second has ``multiplier_digits``
digits (default: also N).

Formats:
  plain       "123*45=" -> "5535"
  reversed    "123*45=" -> "5355"
  scratchpad  "123*45=" -> "123*5=615,123*40=4920>5535"  (one partial product per
              digit of the multiplier, then the answer; zero digits are skipped)
"""
from __future__ import annotations

import numpy as np

from .addition import draw_operand
from .base import Problem, Task, register_task


@register_task
class Multiplication(Task):
    name = "multiplication"
    formats = ("scratchpad", "plain", "reversed")
    max_difficulty = 9

    def __init__(self, format: str | None = None, heldout_fraction: float = 0.1, multiplier_digits: int | None = None):
        super().__init__(format, heldout_fraction)
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
            parts = []
            for i, digit in enumerate(reversed(str(b))):
                if digit != "0" or (i == 0 and b == 0):
                    shift = int(digit) * 10**i
                    parts.append(f"{a}*{shift}={a * shift}")
            trace = ",".join(parts) + ">" + answer
        return Problem(prompt=f"{a}*{b}=", answer=answer, trace=trace, difficulty=difficulty)
