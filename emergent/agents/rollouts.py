"""Sampled traces: many completions per prompt in one KV-cached generate call, and votes."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from emergent.envs import TOKENIZER, extract_answer

from .model import TransformerLM
from .trainer import autocast


@dataclass(frozen=True)
class Rollouts:
    rows: np.ndarray  # [R] problem index of each trace
    prompts: list[str]  # [R]
    completions: list[str]  # [R] EOS excluded
    finished: np.ndarray  # [R] bool: wrote EOS (else ran out of context)
    flops: float


@torch.no_grad()
def sample_rollouts(
    policy: TransformerLM,
    prompts: Sequence[str],
    samples: int,
    *,
    temperature: float,
    generator: torch.Generator | None,
    device: torch.device,
) -> Rollouts:
    """``samples`` completions per prompt, all rows in one KV-cached generate call."""
    rows = np.repeat(np.arange(len(prompts)), samples)
    ids = TOKENIZER.encode_prompts(prompts)
    was = policy.training
    policy.eval()
    with autocast(device):
        gen = policy.generate(
            [ids[r] for r in rows],
            policy.cfg.max_len,
            eos_id=TOKENIZER.eos_id,
            pad_id=TOKENIZER.pad_id,
            temperature=temperature,
            generator=generator,
        )
    policy.train(was)
    completions = TOKENIZER.decode_completions(gen.tokens.cpu().numpy(), gen.lengths.cpu().numpy())
    flops = generation_flops(policy, len(rows), max(len(i) for i in ids), gen.tokens.shape[1])
    return Rollouts(rows, [prompts[r] for r in rows], completions, gen.finished.cpu().numpy(), flops)


def generation_flops(policy: TransformerLM, rows: int, prefix: int, steps: int) -> float:
    """What one KV-cached ``generate`` call ran: a prefill of rows x prefix tokens (the
    longest prompt), then ``steps`` decode steps attending over prefix + steps slots."""
    return (
        policy.flops_per_token(prefix, backward=False) * rows * prefix
        + policy.flops_per_token(prefix + steps, backward=False) * rows * steps
    )


@torch.no_grad()
def complete_greedily(
    policy: TransformerLM,
    tokens: torch.Tensor,
    lengths: torch.Tensor,
    *,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Each state ``tokens[i, :lengths[i]]`` ([M, L] right-padded) continued greedily by the
    policy (or sampled at ``temperature`` > 0 from ``generator``), all in one ``generate``
    call. Returns (tokens [M, L + n] with the continuation after each state, lengths [M] (EOS
    excluded), finished [M] bool: wrote EOS, FLOPs)."""
    rows = tokens.cpu().numpy()
    gen = policy.generate(
        [rows[i, :n] for i, n in enumerate(lengths.tolist())],
        policy.cfg.max_len,
        eos_id=TOKENIZER.eos_id,
        pad_id=TOKENIZER.pad_id,
        temperature=temperature,
        generator=generator,
    )
    n = gen.tokens.shape[1]
    out = torch.cat([tokens, tokens.new_zeros(len(tokens), n)], 1)  # [M, L + n]
    out.scatter_(1, lengths[:, None] + torch.arange(n, device=out.device), gen.tokens.to(out.device))
    return (
        out,
        lengths + gen.lengths.to(lengths.device),
        gen.finished.to(out.device),
        generation_flops(policy, len(rows), int(lengths.max()), n),
    )


def majority_labels(rows: np.ndarray, completions: Sequence[str]) -> np.ndarray:
    """1 where a trace's final answer is its problem's most common answer (ties: first seen)."""
    answers = [extract_answer(c) for c in completions]
    labels = np.zeros(len(rows))
    for r in np.unique(rows):
        idx = np.flatnonzero(rows == r)
        top = Counter(answers[i] for i in idx).most_common(1)[0][0]
        labels[idx] = [answers[i] == top for i in idx]
    return labels
