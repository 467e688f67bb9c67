"""N-digit + N-digit addition.

Formats:
  plain       "123+459=" -> "582"
  reversed    "123+459=" -> "285"  (answer least-significant digit first: each output
              digit then depends only on digits already seen plus one carry, the order
              in which a person adds; Transformers learn it far faster than plain)
  scratchpad  "123+459=" -> "3+9+0=12,2+5+1=8,1+4+0=5>582"  (column sums with carry-in)

Step checker (scratchpad): step i must add column i's two digits (least significant
first, 0 past an operand's end) and the carry out of the step before it (its sum // 10;
0 for the first), and get the sum right.
"""

from __future__ import annotations

import re

import numpy as np

from .base import Problem, Task, register_task


def draw_operand(rng: np.random.Generator, digits: int) -> int:
    """A uniformly random integer with exactly ``digits`` digits (0..9 for one digit)."""
    lo = 0 if digits == 1 else 10 ** (digits - 1)
    return int(rng.integers(lo, 10**digits))


_STEP = re.compile(r"(\d)\+(\d)\+(\d)=(\d+)")


@register_task
class Addition(Task):
    name = "addition"
    difficulty_label = "digits per operand"
    formats = ("reversed", "plain", "scratchpad")
    max_difficulty = 18

    def make_problem(self, rng: np.random.Generator, difficulty: int) -> Problem:
        a, b = draw_operand(rng, difficulty), draw_operand(rng, difficulty)
        return self.problem(a, b, difficulty)

    def problem(self, a: int, b: int, difficulty: int) -> Problem:
        total = str(a + b)
        answer = total[::-1] if self.format == "reversed" else total
        trace = answer
        if self.format == "scratchpad":
            da, db = str(a)[::-1], str(b)[::-1]
            steps, carry = [], 0
            for i in range(max(len(da), len(db))):
                x = int(da[i]) if i < len(da) else 0
                y = int(db[i]) if i < len(db) else 0
                steps.append(f"{x}+{y}+{carry}={x + y + carry}")
                carry = (x + y + carry) // 10
            trace = ",".join(steps) + ">" + answer
        return Problem(prompt=f"{a}+{b}=", answer=answer, trace=trace, difficulty=difficulty)

    def judge_steps(self, problem: Problem, steps: list[str]) -> list[bool]:
        a, b = (t[::-1] for t in problem.prompt.rstrip("=").split("+"))
        columns = max(len(a), len(b))
        digit = lambda t, i: int(t[i]) if i < len(t) else 0  # noqa: E731
        labels, carry = [], 0
        for i, step in enumerate(steps):
            m = _STEP.fullmatch(step)
            x, y = digit(a, i), digit(b, i)
            if m is None:
                labels.append(False)
                carry = (x + y + carry) // 10  # the column's true carry: the next step is judged on its own
                continue
            wx, wy, wc, total = map(int, m.groups())
            labels.append(i < columns and (wx, wy, wc) == (x, y, carry) and total == wx + wy + wc)
            carry = total // 10  # what this step wrote is what the next one builds on
        return labels
