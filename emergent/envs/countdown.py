"""Countdown: reach a target with + - * / over given numbers, each used at most once.

  prompt      "3,7,8,25;53="            (the numbers, ";", the target)
  scratchpad  "7*8=56,56-3=53>(7*8)-3"  (the solver's steps, then the expression)
  plain       "(7*8)-3"

difficulty = how many numbers are given. Only solvable instances are generated: the
target is built by combining a random subset of the numbers, then an exact solver
(iterative deepening over pairs, fewest steps first) writes the gold trace. The
verifier parses and evaluates the expression with exact rationals — never ``eval``.
Any expression that reaches the target counts, not only the gold one.

Step checker (scratchpad): a step "a op b=r" is true iff a and b are available (given
numbers, or results of earlier steps, each used once) and a op b equals r exactly. Every
well-formed step, true or not, uses up the operands it names and makes r available, so
each later step is judged on its own.
"""

from __future__ import annotations

import re
from collections import Counter
from fractions import Fraction
from typing import Sequence

import numpy as np

from .base import Problem, Task, register_task

MAX_EXPRESSION_CHARS = 64
_TOKEN = re.compile(r"\d+|[-+*/()]")
_STEP = re.compile(r"(\d+)([-+*/])(\d+)=(\d+)")


class ExpressionError(ValueError):
    pass


def parse_expression(text: str) -> tuple[Fraction, list[int]]:
    """Evaluate an arithmetic expression of non-negative integers, + - * / and parentheses.

    Returns (value, numbers used). Raises ExpressionError for anything else: unknown
    characters, unbalanced parentheses, division by zero, overlong input.
    """
    if not text or len(text) > MAX_EXPRESSION_CHARS:
        raise ExpressionError("empty or overlong expression")
    tokens = _TOKEN.findall(text)
    if "".join(tokens) != text:
        raise ExpressionError(f"unexpected characters in {text!r}")
    pos = 0
    used: list[int] = []

    def peek() -> str | None:
        return tokens[pos] if pos < len(tokens) else None

    def take() -> str:
        nonlocal pos
        if pos >= len(tokens):
            raise ExpressionError("unexpected end of expression")
        pos += 1
        return tokens[pos - 1]

    def expr() -> Fraction:
        value = term()
        while peek() in ("+", "-"):
            op, rhs = take(), term()
            value = value + rhs if op == "+" else value - rhs
        return value

    def term() -> Fraction:
        value = factor()
        while peek() in ("*", "/"):
            op, rhs = take(), factor()
            if op == "/" and rhs == 0:
                raise ExpressionError("division by zero")
            value = value * rhs if op == "*" else value / rhs
        return value

    def factor() -> Fraction:
        tok = take()
        if tok == "(":
            value = expr()
            if take() != ")":
                raise ExpressionError("unbalanced parentheses")
            return value
        if tok.isdigit():
            used.append(int(tok))
            return Fraction(int(tok))
        raise ExpressionError(f"unexpected token {tok!r}")

    value = expr()  # recursion depth is bounded by MAX_EXPRESSION_CHARS
    if pos != len(tokens):
        raise ExpressionError(f"trailing input after position {pos}")
    return value, used


def parse_prompt(prompt: str) -> tuple[list[int], int]:
    numbers, target = prompt.rstrip("=").split(";")
    return [int(x) for x in numbers.split(",")], int(target)


def is_solution(numbers: Sequence[int], target: int, expression: str) -> bool:
    try:
        value, used = parse_expression(expression)
    except (ExpressionError, RecursionError):
        return False
    return value == target and not (Counter(used) - Counter(numbers))


def _combine(a: int, b: int) -> list[tuple[str, int]]:
    """Legal single steps on a pair (a >= b): results stay positive integers."""
    out = [("+", a + b), ("*", a * b)]
    if a > b:
        out.append(("-", a - b))
    if b > 1 and a % b == 0:
        out.append(("/", a // b))
    return out


def solve(numbers: Sequence[int], target: int) -> list[tuple[int, str, int, int]] | None:
    """Fewest-steps solution as a list of (a, op, b, result), or None. Exact search."""
    failed: set[tuple[tuple[int, ...], int]] = set()

    def dfs(pool: tuple[int, ...], depth: int) -> list | None:
        if depth == 0 or len(pool) < 2:
            return None
        key = (pool, depth)
        if key in failed:
            return None
        for i in range(len(pool)):
            for j in range(i + 1, len(pool)):
                a, b = max(pool[i], pool[j]), min(pool[i], pool[j])
                rest = pool[:i] + pool[i + 1 : j] + pool[j + 1 :]
                for op, r in _combine(a, b):
                    if r == target:
                        return [(a, op, b, r)]
                    tail = dfs(tuple(sorted(rest + (r,))), depth - 1)
                    if tail is not None:
                        return [(a, op, b, r)] + tail
        failed.add(key)
        return None

    pool = tuple(sorted(numbers))
    if target in pool:
        return []
    for depth in range(1, len(pool)):
        steps = dfs(pool, depth)
        if steps is not None:
            return steps
    return None


def steps_to_expression(steps: list[tuple[int, str, int, int]], numbers: Sequence[int]) -> str:
    """Rebuild one expression from solver steps; each intermediate stays parenthesised."""
    pool: list[tuple[int, str]] = [(n, str(n)) for n in numbers]

    def pop(value: int) -> str:
        # prefer the most recent intermediate of that value (it is what the step used)
        for k in range(len(pool) - 1, -1, -1):
            if pool[k][0] == value:
                return pool.pop(k)[1]
        raise AssertionError(f"value {value} not available")

    for a, op, b, r in steps:
        ea, eb = pop(a), pop(b)
        pool.append((r, f"({ea}{op}{eb})"))
    expr = pool[-1][1]
    return expr[1:-1] if expr.startswith("(") and steps else expr


@register_task
class Countdown(Task):
    name = "countdown"
    difficulty_label = "numbers given"
    formats = ("scratchpad", "plain")
    min_difficulty = 2
    max_difficulty = 6

    def __init__(
        self,
        format: str | None = None,
        heldout_fraction: float = 0.1,
        check_steps: bool = False,
        max_number: int = 20,
        max_target: int = 200,
    ):
        super().__init__(format, heldout_fraction, check_steps)
        self.max_number = max_number
        self.max_target = max_target

    def make_problem(self, rng: np.random.Generator, difficulty: int) -> Problem:
        while True:
            numbers = [int(x) for x in rng.integers(1, self.max_number + 1, size=difficulty)]
            # build a reachable target by combining a random subset of >= 2 numbers
            pool = [numbers[k] for k in rng.permutation(difficulty)[: int(rng.integers(2, difficulty + 1))]]
            while len(pool) > 1:
                a, b = pool.pop(), pool.pop()
                a, b = max(a, b), min(a, b)
                options = _combine(a, b)
                pool.append(options[int(rng.integers(len(options)))][1])
            target = pool[0]
            if target in numbers or not 1 <= target <= self.max_target:
                continue
            steps = solve(numbers, target)
            assert steps, "the target was built from the numbers, so a solution exists"
            return self.problem(numbers, target, steps, difficulty)

    def problem(self, numbers: list[int], target: int, steps, difficulty: int) -> Problem:
        answer = steps_to_expression(steps, numbers)
        trace = answer
        if self.format == "scratchpad":
            trace = ",".join(f"{a}{op}{b}={r}" for a, op, b, r in steps) + ">" + answer
        prompt = ",".join(map(str, numbers)) + f";{target}="
        return Problem(prompt=prompt, answer=answer, trace=trace, difficulty=difficulty)

    def check_answers(self, problems: Sequence[Problem], answers: Sequence[str]) -> np.ndarray:
        # Parsing is inherently per expression; it is microseconds next to generation.
        return np.array([is_solution(*parse_prompt(p.prompt), a) for p, a in zip(problems, answers)], dtype=bool)

    def judge_steps(self, problem: Problem, steps: list[str]) -> list[bool]:
        numbers, _ = parse_prompt(problem.prompt)
        pool = Counter(numbers)
        labels = []
        for step in steps:
            m = _STEP.fullmatch(step)
            if m is None:
                labels.append(False)
                continue
            a, op, b, r = int(m[1]), m[2], int(m[3]), int(m[4])
            wanted = Counter([a, b])
            available = not (wanted - pool)
            value = {"+": a + b, "-": a - b, "*": a * b, "/": Fraction(a, b) if b else None}[op]
            labels.append(available and value == r)
            pool -= wanted  # what it names is used up (as far as it was there)
            pool[r] += 1
        return labels

    def drill_steps(self, problem: Problem, rng: np.random.Generator) -> str:
        """Steps over the problem's numbers until one is left, as a solver writes them (two
        available numbers, larger first, a legal operation), each result true or, half the
        time, false: the target (the error a policy that wants the target makes most), a near
        miss (off by 1-3 or 10), or any number up to the largest target."""
        pool, target = parse_prompt(problem.prompt)
        steps = []
        while len(pool) > 1:
            i, j = rng.choice(len(pool), 2, replace=False)
            a, b = max(pool[i], pool[j]), min(pool[i], pool[j])
            pool = [x for k, x in enumerate(pool) if k not in (i, j)]
            options = _combine(a, b)
            op, r = options[int(rng.integers(len(options)))]
            if rng.random() < 0.5:
                u = rng.random()
                if u < 0.4:
                    wrong = target
                elif u < 0.8:
                    wrong = max(r + int(rng.choice([-10, -3, -2, -1, 1, 2, 3, 10])), 0)
                else:
                    wrong = int(rng.integers(1, self.max_target + 1))
                r = wrong if wrong != r else r + 1
            pool.append(r)
            steps.append(f"{a}{op}{b}={r}")
        return ",".join(steps) + ">"
