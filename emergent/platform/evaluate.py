"""Evaluation: greedy decoding of a fixed problem set per split, batched, then verified.

The sets depend on ``eval.seed`` and the task config only, so every run of an
experiment — any seed, any method — is scored on the same problems.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from emergent import tags
from emergent.agents.model import TransformerLM
from emergent.agents.policy_value import PolicyValueEvaluator, output_completions
from emergent.agents.search import search
from emergent.agents.trainer import autocast
from emergent.envs import SPLITS, TOKENIZER, Problem, Scores, SplitSpec, Task, extract_answer

from .checkpoint import atomic_write
from .metrics import majority_at_k, pass_at_k


@dataclass
class Sampled:
    """pass@k / maj@k of one split: n sampled completions per problem, and the raw record
    a report recomputes any k <= n from (and bootstraps over problems)."""

    correct: np.ndarray  # [P, n] bool: sample j of problem i is exactly right
    answers: np.ndarray  # [P, n] int: equal ids within a row = the same final answer
    difficulty: np.ndarray  # [P]
    scalars: dict[str, float]  # pass@k / maj@k tags, overall and per difficulty


@dataclass
class SplitResult:
    metrics: dict[str, float]  # tags.EVAL_METRICS (+ EVAL_FALSE_STEPS) -> mean
    by_difficulty: dict[int, dict[str, float]]  # difficulty -> metric -> mean
    samples: list[tuple[str, str, str, bool]] = field(default_factory=list)  # prompt, completion, gold, exact
    sampled: Sampled | None = None  # eval.pass_k
    scores: Scores | None = None  # per problem: what a report bootstraps over
    difficulty: np.ndarray | None = None  # [P]


def summarise(problems: Sequence[Problem], scores: Scores) -> tuple[dict, dict]:
    """Means of each metric over the split and per difficulty (``false_steps`` where the
    task judges steps: a share of the right answers, not of all problems; and
    ``sound_exact_match``: right answers with every step true, a share of all problems)."""
    values = {  # tags.EVAL_METRICS, each from its Scores field
        tags.EVAL_EXACT: scores.exact.astype(float),
        tags.EVAL_TOKEN_ACCURACY: scores.token_accuracy,
        tags.EVAL_EDIT_DISTANCE: scores.edit_distance,
    }
    assert tuple(values) == tags.EVAL_METRICS
    diff = np.array([p.difficulty for p in problems])

    def means(rows) -> dict[str, float]:
        out = {k: float(v[rows].mean()) for k, v in values.items()}
        if scores.false_step is not None:
            right = (scores.exact | scores.false_step)[rows]  # the answer is right
            out[tags.EVAL_FALSE_STEPS] = float(scores.false_step[rows].sum() / max(1, right.sum()))
            out[tags.EVAL_SOUND_EXACT] = float((right & ~scores.false_step[rows]).mean())
        return out

    return means(slice(None)), {int(d): means(diff == d) for d in np.unique(diff)}


def generate_completions(
    model: TransformerLM, prompts: Sequence[str], device: torch.device, batch_size: int, **sampling
) -> list[str]:
    """Decode completions for many prompts: length-sorted batches, KV-cached generation.

    Prompts that do not fit the context get an empty completion (scored wrong).
    """
    encoded = TOKENIZER.encode_prompts(prompts)
    out = [""] * len(prompts)
    fits = [i for i, e in enumerate(encoded) if len(e) < model.cfg.max_len]
    order = sorted(fits, key=lambda i: len(encoded[i]))  # similar lengths share a batch: less padding
    was_training = model.training
    model.eval()
    with autocast(device):
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            gen = model.generate(
                [encoded[i] for i in idx],
                model.cfg.max_len,
                eos_id=TOKENIZER.eos_id,
                pad_id=TOKENIZER.pad_id,
                **sampling,
            )
            texts = TOKENIZER.decode_completions(gen.tokens.cpu().numpy(), gen.lengths.cpu().numpy())
            for i, t in zip(idx, texts):
                out[i] = t
    model.train(was_training)
    return out


def search_completions(
    model: TransformerLM, reward_net, task: Task, problems: Sequence[Problem], device, cfg, batch_size: int
) -> list[str]:
    """Decode every token by MCTS (``search.*``); leaf values from ``reward_net`` (None: a
    neutral 0.5). With ``search.terminal_value=verifier`` finished states are checked
    by the verifier: test-time verification, which a report must name as such."""
    out: list[str] = []
    was = model.training
    model.eval()
    for start in range(0, len(problems), batch_size):
        chunk = list(problems[start : start + batch_size])
        ids = TOKENIZER.encode_prompts([p.prompt for p in chunk])

        def exact(rows, completions, chunk=chunk):
            return task.verdicts([chunk[r] for r in rows], completions)

        ev = PolicyValueEvaluator.for_search(model, reward_net, cfg, ids, exact)
        with autocast(device):
            res = search(
                ids,
                ev,
                cfg,
                max_len=model.cfg.max_len,
                vocab_size=model.vocab_size,
                eos_id=TOKENIZER.eos_id,
                device=device,
            )
        out += output_completions(res)
    model.train(was)
    return out


def sampled_scores(
    task: Task, problems: Sequence[Problem], completions: Sequence[str], n: int, ks: Sequence[int], split: str
) -> Sampled:
    """pass@k and maj@k from ``n`` completions per problem, problem-major ([P * n])."""
    P = len(problems)
    correct = task.verdicts([p for p in problems for _ in range(n)], completions).reshape(P, n)
    _, ids = np.unique(
        np.array([extract_answer(c) for c in completions], dtype=object).astype(str), return_inverse=True
    )
    answers = ids.reshape(P, n)
    diff = np.array([p.difficulty for p in problems])
    out = {}
    for k in ks:
        per = {"pass": pass_at_k(np.full(P, n), correct.sum(1), k), "maj": majority_at_k(answers, correct, k)}
        for kind, v in per.items():
            tag = tags.pass_tag if kind == "pass" else tags.maj_tag
            out[tag(split, k)] = float(v.mean())
            for d in np.unique(diff):
                out[tag(split, k, int(d))] = float(v[diff == d].mean())
    return Sampled(correct, answers, diff, out)


class Evaluator:
    def __init__(
        self,
        task: Task,
        splits: SplitSpec,
        *,
        problems_per_split: int,
        seed: int,
        split_names: Sequence[str] = SPLITS,
        batch_size: int = 512,
        samples: int = 4,
        train_set: Sequence[Problem] | None = None,
        decode: str = "greedy",
        search_cfg=None,
        pass_k: Sequence[int] = (),
        pass_samples: int | None = None,
        temperature: float = 1.0,
    ) -> None:
        self.task, self.batch_size, self.samples = task, batch_size, samples
        self.seed, self.pass_k, self.temperature = seed, sorted(set(pass_k)), temperature
        self.pass_samples = (pass_samples or max(pass_k)) if pass_k else 0
        self.decode, self.search_cfg = decode, search_cfg
        self.sets: dict[str, list[Problem]] = {}
        for k, split in enumerate(SPLITS):
            if split not in split_names:
                continue
            if split == "train" and train_set is not None:  # a finite training set: measure fit on it
                self.sets[split] = list(train_set[:problems_per_split])
                continue
            rng = np.random.default_rng([seed, k])
            self.sets[split] = task.sample(rng, problems_per_split, split, splits.difficulties(split))

    def run(self, model: TransformerLM, device: torch.device, reward_net=None) -> dict[str, SplitResult]:
        results = {}
        for k, (split, problems) in enumerate(self.sets.items()):
            if self.decode == "search":
                completions = search_completions(
                    model, reward_net, self.task, problems, device, self.search_cfg, min(self.batch_size, 64)
                )
            else:
                completions = generate_completions(model, [p.prompt for p in problems], device, self.batch_size)
            scores = self.task.verify_batch(problems, completions, with_steps=True)
            overall, by = summarise(problems, scores)
            samples = [
                (p.prompt, c, p.trace, bool(s)) for p, c, s in zip(problems[: self.samples], completions, scores.exact)
            ]
            sampled = None
            if self.pass_k:  # every problem x sample in length-sorted batches of eval.batch_size rows
                n = self.pass_samples
                # its own stream, fixed by eval.seed: every evaluation of every run draws alike
                gen = torch.Generator().manual_seed(self.seed * 1_000_003 + k)
                drawn = generate_completions(
                    model,
                    [p.prompt for p in problems for _ in range(n)],
                    device,
                    self.batch_size,
                    temperature=self.temperature,
                    generator=gen,
                )
                sampled = sampled_scores(self.task, problems, drawn, n, self.pass_k, split)
            results[split] = SplitResult(
                overall, by, samples, sampled, scores, np.array([p.difficulty for p in problems])
            )
        return results


def frontier(exact_by_length: dict[int, float], threshold: float) -> int:
    """The largest length L such that exact match is >= ``threshold`` at every length from
    the smallest evaluated up to L (lengths contiguous); the smallest less one when it fails."""
    lengths = sorted(exact_by_length)
    reached = lengths[0] - 1
    for length in lengths:
        if length != reached + 1 or exact_by_length[length] < threshold:
            break
        reached = length
    return reached


def scalars(results: dict[str, SplitResult], frontier_threshold: float = 0.99) -> dict[str, float]:
    """Flatten eval results into ``{tag: value}`` (overall and per difficulty), with each
    split's length frontier and ``eval/frontier`` over the held-out splits (test, then
    extrapolate: a length in both is read from test)."""
    out, held_out = {}, {}
    for split, r in results.items():
        for m in r.metrics:  # tags.EVAL_METRICS, and false_steps where the task judges steps
            out[tags.eval_tag(split, m)] = r.metrics[m]
            for d, md in r.by_difficulty.items():
                out[tags.eval_tag(split, m, d)] = md[m]
        exact = {d: md[tags.EVAL_EXACT] for d, md in r.by_difficulty.items()}
        out[tags.eval_tag(split, tags.EVAL_FRONTIER)] = float(frontier(exact, frontier_threshold))
        if split in ("test", "extrapolate"):
            held_out = {**exact, **held_out}
        if r.sampled is not None:
            out.update(r.sampled.scalars)
    if held_out:
        out[tags.EVAL_LENGTH_FRONTIER] = float(frontier(held_out, frontier_threshold))
    return out


def save_evaluation(path, results: dict[str, SplitResult]) -> None:
    """The per-problem record of one evaluation, atomically, for a report to recompute any
    k and bootstrap over problems: per split ``<split>/exact`` [P] bool,
    ``<split>/token_accuracy`` [P], ``<split>/difficulty`` [P]; with eval.pass_k also
    ``<split>/correct`` [P, n] and ``<split>/answers`` [P, n] of the sampled completions."""
    arrays = {}
    for split, r in results.items():
        if r.scores is not None:
            arrays.update(
                {
                    f"{split}/exact": r.scores.exact,
                    f"{split}/token_accuracy": r.scores.token_accuracy,
                    f"{split}/difficulty": r.difficulty,
                }
            )
        if r.sampled is not None:  # its problems are the split's: difficulty is written once, above
            arrays.update({f"{split}/correct": r.sampled.correct, f"{split}/answers": r.sampled.answers})
            arrays.setdefault(f"{split}/difficulty", r.sampled.difficulty)
    if arrays:
        atomic_write(path, lambda f: np.savez_compressed(f, **arrays))
