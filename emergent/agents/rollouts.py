"""Sampled traces: many completions per prompt in one KV-cached generate call, and votes."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from emergent.envs import TOKENIZER, extract_answer

from .learner import autocast
from .model import TransformerLM


@dataclass(frozen=True)
class Rollouts:
    rows: np.ndarray           # [R] problem index of each trace
    prompts: list[str]         # [R]
    completions: list[str]     # [R] EOS excluded
    finished: np.ndarray       # [R] bool: wrote EOS (else ran out of context)
    flops: float


@torch.no_grad()
def sample_rollouts(policy: TransformerLM, prompts: Sequence[str], samples: int, *, temperature: float,
                    generator: torch.Generator | None, device: torch.device) -> Rollouts:
    """``samples`` completions per prompt, all rows in one KV-cached generate call."""
    rows = np.repeat(np.arange(len(prompts)), samples)
    ids = TOKENIZER.encode_prompts(prompts)
    was = policy.training
    policy.eval()
    with autocast(device):
        gen = policy.generate([ids[r] for r in rows], policy.cfg.max_len, eos_id=TOKENIZER.eos_id,
                              pad_id=TOKENIZER.pad_id, temperature=temperature, generator=generator)
    policy.train(was)
    completions = TOKENIZER.decode_completions(gen.tokens.cpu().numpy(), gen.lengths.cpu().numpy())
    Tp, N = max(len(i) for i in ids), gen.tokens.shape[1]
    R = len(rows)
    # what ran: a prefill of R x Tp tokens, then N decode steps attending over Tp + N slots
    flops = policy.flops_per_token(Tp, backward=False) * R * Tp + policy.flops_per_token(Tp + N, backward=False) * R * N
    return Rollouts(rows, [prompts[r] for r in rows], completions, gen.finished.cpu().numpy(), flops)


def majority_labels(rows: np.ndarray, completions: Sequence[str]) -> np.ndarray:
    """1 where a trace's final answer is its problem's most common answer (ties: first seen)."""
    answers = [extract_answer(c) for c in completions]
    labels = np.zeros(len(rows))
    for r in np.unique(rows):
        idx = np.flatnonzero(rows == r)
        top = Counter(answers[i] for i in idx).most_common(1)[0][0]
        labels[idx] = [answers[i] == top for i in idx]
    return labels
