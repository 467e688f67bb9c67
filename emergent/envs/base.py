"""The task interface: problems, gold traces, splits and batched verification.

A ``Task`` writes problems (prompt, gold trace, gold answer) from a seeded numpy
``Generator`` and verifies completions. Everything a learner sees crosses this file as
``Problem`` records and ``Scores`` arrays.

Splits. ``test`` and ``train`` share difficulties but never problems: a problem belongs
to the held-out half of the problem space iff a keyed hash of its prompt falls below
``heldout_fraction``. Training rejects held-out prompts; ``test`` draws only them. The
partition depends on the prompt alone (not on the run's seed), so every run — any seed,
any method — is evaluated on the same held-out problems. ``extrapolate`` draws from
difficulties strictly above the training range, so it is disjoint by construction.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Sequence

import numpy as np

from .tokenizer import ANSWER_SEP, STEP_SEP

SPLITS = ("train", "test", "extrapolate")


@dataclass(frozen=True)
class Problem:
    prompt: str  # what the model is shown, e.g. "123+456="
    answer: str  # the gold answer exactly as it must be written, e.g. "975" (reversed)
    trace: str  # the gold completion a solver writes: scratchpad + ">" + answer, or the answer
    difficulty: int  # the task's difficulty knob (digits, list length, count of numbers)


@dataclass(frozen=True)
class Score:
    exact: bool
    token_accuracy: float  # per-position agreement of the answer, over the longer length
    edit_distance: float  # Levenshtein(answer, gold) / max(len), 0 = identical


@dataclass(frozen=True)
class Scores:
    """Batched verifier output; every field has shape [B]."""

    exact: np.ndarray  # bool: the verdict (the answer; with check_steps, every step too)
    token_accuracy: np.ndarray  # float64 in [0, 1]
    edit_distance: np.ndarray  # float64 in [0, 1]
    # the answer is right but a scratchpad step is false (where steps were judged: verify_batch)
    false_step: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.exact)

    def __getitem__(self, i: int) -> Score:
        return Score(bool(self.exact[i]), float(self.token_accuracy[i]), float(self.edit_distance[i]))


def extract_answer(completion: str) -> str:
    """The answer is what follows the last ">" (scratchpad formats) or the whole completion."""
    return completion.rsplit(ANSWER_SEP, 1)[-1]


def scratchpad_steps(completion: str) -> list[str]:
    """The steps a scratchpad writes before its answer ("s1,s2>answer" -> ["s1", "s2"]);
    [] when the completion has no answer separator (no scratchpad at all)."""
    if ANSWER_SEP not in completion:
        return []
    return completion.rsplit(ANSWER_SEP, 1)[0].split(STEP_SEP)


def _pad_codes(strings: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Strings -> (codes [B, L] int16 padded with -1, lengths [B])."""
    lengths = np.fromiter((len(s) for s in strings), dtype=np.int64, count=len(strings))
    width = max(int(lengths.max(initial=0)), 1)
    codes = np.full((len(strings), width), -1, dtype=np.int16)
    flat = np.frombuffer("".join(strings).encode("utf-32-le"), dtype=np.uint32).astype(np.int16)
    rows = np.repeat(np.arange(len(strings)), lengths)
    cols = np.arange(len(flat)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    codes[rows, cols] = flat
    return codes, lengths


def score_strings(pred: Sequence[str], gold: Sequence[str]) -> Scores:
    """Exact match, token accuracy and normalised edit distance for a whole batch at once.

    The Levenshtein table is filled for all rows together: the Python loops run over
    string positions (short), never over examples.
    """
    assert len(pred) == len(gold)
    if len(pred) == 0:
        z = np.zeros(0)
        return Scores(z.astype(bool), z, z)
    p, lp = _pad_codes(pred)
    g, lg = _pad_codes(gold)
    width = max(p.shape[1], g.shape[1])
    p = np.pad(p, ((0, 0), (0, width - p.shape[1])), constant_values=-1)
    g = np.pad(g, ((0, 0), (0, width - g.shape[1])), constant_values=-1)
    longest = np.maximum(np.maximum(lp, lg), 1)
    exact = (lp == lg) & (p == g).all(axis=1)
    g = np.where(g < 0, -2, g)  # from here on, padding never matches padding
    token_accuracy = np.where(exact, 1.0, (p == g).sum(axis=1) / longest)

    # dist[b, i, j] = edit distance between pred[b][:i] and gold[b][:j]
    B, P, G = len(pred), int(lp.max()), int(lg.max())
    prev = np.tile(np.arange(G + 1), (B, 1))
    at_end = np.where(lp == 0, prev[np.arange(B), lg], 0)
    for i in range(1, P + 1):
        cur = np.empty_like(prev)
        cur[:, 0] = i
        sub = prev[:, :-1] + (p[:, i - 1 : i] != g[:, :G])
        dele = prev[:, 1:] + 1
        best = np.minimum(sub, dele)
        for j in range(1, G + 1):  # insertion depends on cur[:, j-1]
            cur[:, j] = np.minimum(best[:, j - 1], cur[:, j - 1] + 1)
        at_end = np.where(lp == i, cur[np.arange(B), lg], at_end)
        prev = cur
    edit = at_end / longest
    return Scores(exact, token_accuracy.astype(np.float64), edit.astype(np.float64))


class ProblemSpaceError(ValueError):
    """A split cannot be drawn: its difficulty has too few problems (``Task.sample``)."""


class Task(ABC):
    """A verifiable reasoning task. Subclasses live one per file and register themselves."""

    name: ClassVar[str]
    formats: ClassVar[tuple[str, ...]] = ("plain",)
    difficulty_label: ClassVar[str] = "the task knob"  # what difficulty counts (figures' axes)
    min_difficulty: ClassVar[int] = 1
    max_difficulty: ClassVar[int] = 12

    def __init__(self, format: str | None = None, heldout_fraction: float = 0.1, check_steps: bool = False) -> None:
        format = format or self.formats[0]
        if format not in self.formats:
            raise ValueError(f"task {self.name!r} has no format {format!r}; choose one of {list(self.formats)}")
        if not 0.0 < heldout_fraction < 1.0:
            raise ValueError(f"heldout_fraction must lie in (0, 1), got {heldout_fraction}")
        self.format = format
        self.heldout_fraction = heldout_fraction
        if check_steps and not self.has_step_checker:
            raise ValueError(
                f"check_steps: task {self.name!r} format {format!r} has no step checker "
                f"(it needs the scratchpad format of a task that judges steps)"
            )
        self.check_steps = bool(check_steps)

    @property
    def has_step_checker(self) -> bool:
        """The format writes a scratchpad and this task can judge its steps."""
        return self.format == "scratchpad" and type(self).judge_steps is not Task.judge_steps

    @property
    def has_step_drills(self) -> bool:
        """The task has a step checker and writes drills for it (``drill_steps``)."""
        return self.has_step_checker and type(self).drill_steps is not Task.drill_steps

    # -- generation -----------------------------------------------------------------
    @abstractmethod
    def make_problem(self, rng: np.random.Generator, difficulty: int) -> Problem:
        """One problem of the given difficulty, drawn from ``rng``."""

    def is_heldout(self, prompt: str) -> bool:
        digest = hashlib.blake2b(prompt.encode(), digest_size=8, key=b"emergent-split").digest()
        return int.from_bytes(digest, "little") / 2.0**64 < self.heldout_fraction

    def check_difficulty(self, lo: int, hi: int) -> None:
        if not (self.min_difficulty <= lo <= hi <= self.max_difficulty):
            raise ValueError(
                f"task {self.name!r} supports difficulties {self.min_difficulty}..{self.max_difficulty}, got {lo}..{hi}"
            )

    def sample(self, rng: np.random.Generator, n: int, split: str, difficulties: Sequence[int]) -> list[Problem]:
        """``n`` problems of ``split``; difficulty i is ``difficulties[i % len]``.

        ``train`` never yields a held-out prompt and ``test`` yields only held-out
        prompts. ``extrapolate`` is disjoint from training by difficulty (the caller,
        ``SplitSpec``, guarantees its range lies above the training range).
        """
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {list(SPLITS)}")
        out: list[Problem] = []
        for i in range(n):
            d = int(difficulties[i % len(difficulties)])
            for _ in range(100_000):
                p = self.make_problem(rng, d)
                if split == "extrapolate" or self.is_heldout(p.prompt) == (split == "test"):
                    break
            else:  # a difficulty with too few problems for the split (or an absurd heldout_fraction)
                raise ProblemSpaceError(
                    f"task {self.name!r}: no {split} problem of difficulty {d} in 100,000 draws: too few problems "
                    f"there to hold a {split} share out (heldout_fraction={self.heldout_fraction}); "
                    f"start task.difficulty above {d}"
                )
            out.append(p)
        return out

    # -- verification ---------------------------------------------------------------
    def check_answers(self, problems: Sequence[Problem], answers: Sequence[str]) -> np.ndarray | None:
        """Task-specific correctness [B] bool, or None when correct means 'equals the gold answer'."""
        return None

    def judge_steps(self, problem: Problem, steps: list[str]) -> list[bool]:
        """One label per scratchpad step: True iff the step is a well-formed, true equation
        that does what the task's procedure does at that point, given the problem and the
        steps written before it (each step is judged on its own: a step that builds on an
        earlier false result consistently is true). Tasks with a scratchpad override it."""
        raise NotImplementedError(f"task {self.name!r} has no step checker")

    def drill_steps(self, problem: Problem, rng: np.random.Generator) -> str:
        """A scratchpad for ``problem`` whose steps are well formed but true or false at random,
        ending at the answer separator with no answer: a drill for a network learning to check
        steps (``reward.step_drills``). What labels it is ``judge_steps``, never how it was
        made. Tasks with a step checker may override it."""
        raise NotImplementedError(f"task {self.name!r} writes no step drills")

    def step_labels(self, problems: Sequence[Problem], completions: Sequence[str]) -> list[np.ndarray]:
        """Per completion, [steps] bool: each scratchpad step's label (``judge_steps``).
        Parsing is per string (regular expressions over a few short steps): microseconds
        each, next to the milliseconds that writing the trace cost."""
        if not self.has_step_checker:
            raise ValueError(f"task {self.name!r} format {self.format!r} has no step checker")
        return [np.array(self.judge_steps(p, scratchpad_steps(c)), dtype=bool) for p, c in zip(problems, completions)]

    def verify_batch(
        self, problems: Sequence[Problem], completions: Sequence[str], *, with_steps: bool = False
    ) -> Scores:
        """Verdicts and graded scores. The steps are judged only where they are needed: for
        the verdict (``check_steps``), or for ``Scores.false_step`` when ``with_steps`` asks
        (evaluation does; the verifier calls inside training and search do not)."""
        answers = [extract_answer(c) for c in completions]
        scores = score_strings(answers, [p.answer for p in problems])
        correct = self.check_answers(problems, answers)
        if correct is not None:  # a correct answer other than the gold one earns full graded credit too
            scores = Scores(
                exact=correct,
                token_accuracy=np.where(correct, 1.0, scores.token_accuracy),
                edit_distance=np.where(correct, 0.0, scores.edit_distance),
            )
        if not (self.has_step_checker and (self.check_steps or with_steps)):
            return scores
        sound = self._sound(problems, completions)
        exact = scores.exact & sound if self.check_steps else scores.exact
        return Scores(exact, scores.token_accuracy, scores.edit_distance, false_step=scores.exact & ~sound)

    def verdicts(self, problems: Sequence[Problem], completions: Sequence[str]) -> np.ndarray:
        """``verify_batch(...).exact`` [B] bool without the graded scores (their edit
        distances are most of a verifier call's time): what training labels and the search's
        terminal states read."""
        answers = [extract_answer(c) for c in completions]
        correct = self.check_answers(problems, answers)
        if correct is None:  # correct means "equals the gold answer"
            correct = np.array(answers, dtype=object) == np.array([p.answer for p in problems], dtype=object)
            correct = correct.astype(bool).reshape(len(answers))
        if self.has_step_checker and self.check_steps:
            correct = correct & self._sound(problems, completions)
        return correct

    def _sound(self, problems: Sequence[Problem], completions: Sequence[str]) -> np.ndarray:
        """[B] bool: a scratchpad with steps, every one of them true."""
        # a scratchpad with no steps, or with any false one, is not a sound derivation
        return np.array(
            [len(labels) > 0 and bool(labels.all()) for labels in self.step_labels(problems, completions)], dtype=bool
        )

    def verify(self, problem: Problem, completion: str) -> Score:
        return self.verify_batch([problem], [completion])[0]


@dataclass(frozen=True)
class SplitSpec:
    """Difficulty ranges (inclusive) of the training split and of the extrapolation split."""

    train: tuple[int, int]
    extrapolate: tuple[int, int]

    def validate(self, task: Task) -> None:
        task.check_difficulty(*self.train)
        task.check_difficulty(*self.extrapolate)
        if self.extrapolate[0] <= self.train[1]:
            raise ValueError(
                f"extrapolation difficulties {self.extrapolate[0]}..{self.extrapolate[1]} must lie above "
                f"the training range {self.train[0]}..{self.train[1]}"
            )

    def difficulties(self, split: str) -> list[int]:
        lo, hi = self.extrapolate if split == "extrapolate" else self.train
        return list(range(lo, hi + 1))


TASKS: dict[str, type[Task]] = {}


def register_task(cls: type[Task]) -> type[Task]:
    TASKS[cls.name] = cls
    return cls


def make_task(name: str, **kwargs) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {sorted(TASKS)}")
    return TASKS[name](**kwargs)
