"""Metrics over arrays of held-out predictions: the reward net's ranking and calibration.

Pure numpy. The platform computes them over every held-out trace of a logging window
(``StepResult.heldout``), so a method never needs to know how they are aggregated.
"""
from __future__ import annotations

import numpy as np

from emergent import tags


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


def reward_net_diagnostics(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """AUC, ECE and the rate at which P >= 0.5 disagrees with the verifier, by tag."""
    return {
        tags.REWARD_AUC: auc(probs, labels),
        tags.REWARD_ECE: expected_calibration_error(probs, labels),
        tags.REWARD_DISAGREEMENT: float(np.mean((probs >= 0.5) != (labels >= 0.5))) if len(probs) else float("nan"),
    }
