"""The reward-and-objective network: P(final answer correct | prompt, prefix) per position.

Own weights, not a value head on the policy trunk. Three reasons:
  * it is the objective the policy is optimised against; sharing a trunk lets every
    policy update move the judge too, the easiest route to reward hacking;
  * its targets (verifier outcomes of the policy's own traces) are few and noisy next to
    the policy's dense token targets, so a shared trunk would let one loss drown the other;
  * it can be sized, trained and evaluated (AUC, calibration) on its own, and a scorer
    trained once can rank traces from any policy.
The cost is a second forward pass per scored batch, which the FLOP ledger counts.

Position t's output scores the prefix ending at token t: the value of the state a search
reaches after writing that token. The prompt's state is the last prompt token's output;
a finished trace's is the EOS token's.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .model import ModelConfig, TransformerLM


class ValueBatch(NamedTuple):
    inputs: torch.Tensor    # [B, T] BOS + prompt + completion + EOS, right-padded
    mask: torch.Tensor      # [B, T] float: 1 at the states to train (last prompt token .. EOS)
    labels: torch.Tensor    # [B] float: 1 if the verifier accepted the trace, else 0

    def to(self, device) -> "ValueBatch":
        return ValueBatch(*(t.to(device, non_blocking=True) for t in self))


class RewardNet(nn.Module):
    def __init__(self, cfg: ModelConfig, vocab_size: int) -> None:
        super().__init__()
        self.trunk = TransformerLM(cfg, vocab_size)  # its tied LM head adds no parameters and is unused
        self.head = nn.Linear(cfg.d_model, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)  # starts at P = 0.5 everywhere: no opinion

    @property
    def cfg(self) -> ModelConfig:
        return self.trunk.cfg

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """idx [B, T] (right-padded) -> logits [B, T] of P(correct | tokens[:t+1])."""
        return self.head(self.trunk.hidden(idx)).squeeze(-1).float()

    def value_at(self, idx: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """P(correct) of each row's state after its last real token: idx [B, T], lengths [B] -> [B]."""
        logits = self(idx)
        return torch.sigmoid(logits.gather(1, (lengths - 1).clamp(min=0)[:, None]).squeeze(1))

    def flops_per_token(self, context: int, *, backward: bool) -> float:
        c = self.cfg
        per = self.trunk.flops_per_token(context, backward=backward)
        lm_head = 2 * c.d_model * self.trunk.vocab_size * (3 if backward else 1)
        head = 2 * c.d_model * (3 if backward else 1)
        return per - lm_head + head  # the value head replaces the LM head


def value_loss(net: RewardNet, batch: ValueBatch) -> torch.Tensor:
    """Binary cross-entropy of every trained prefix against its trace's outcome."""
    logits = net(batch.inputs)  # [B, T]
    target = batch.labels[:, None].expand_as(logits)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (bce * batch.mask).sum() / batch.mask.sum().clamp(min=1)


# -- held-out diagnostics -------------------------------------------------------------------

def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties counted half); nan if one class is absent."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(bool)
    n_pos, n_neg = labels.sum(), (~labels).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 10) -> float:
    """Mean |accuracy - confidence| over equal-width probability bins, weighted by bin size."""
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    if len(probs) == 0:
        return float("nan")
    which = np.minimum((probs * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        sel = which == b
        if sel.any():
            total += sel.sum() * abs(labels[sel].mean() - probs[sel].mean())
    return float(total / len(probs))
