"""Metrics over arrays: the reward net's ranking and calibration over held-out predictions,
and pass@k / maj@k over sampled answers.

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


def pass_at_k(n, c, k: int) -> np.ndarray:
    """Unbiased pass@k per problem (Chen et al. 2021): 1 - C(n-c, k) / C(n, k), from n
    samples of which c are correct. n, c: [P] ints, 1 <= k <= n. Returns [P] float.

    C(n-c, k) / C(n, k) = prod_{j=n-c+1}^{n} (1 - k/j), a difference of prefix sums of
    log(1 - k/j) over j > k: no large binomials, no loop over problems."""
    n, c = np.broadcast_arrays(np.asarray(n, dtype=np.int64), np.asarray(c, dtype=np.int64))
    if k < 1 or (n < k).any() or (c < 0).any() or (c > n).any():
        raise ValueError(f"pass@{k} needs 1 <= k <= n and 0 <= c <= n per problem")
    j = np.arange(k + 1, int(n.max()) + 1)
    S = np.concatenate([np.zeros(k + 1), np.cumsum(np.log1p(-k / j))])  # S[m] = sum_{j=k+1}^{m}, S[<=k] = 0
    miss = n - c
    none_right = np.where(miss >= k, np.exp(S[n] - S[np.maximum(miss, k)]), 0.0)  # P(all k wrong)
    return 1.0 - none_right


def majority_at_k(answers: np.ndarray, correct: np.ndarray, k: int) -> np.ndarray:
    """maj@k per problem: whether the most common answer among the first k samples is
    correct (ties: the answer seen first). answers: [P, n] answer ids (equal: the same
    answer); correct: [P, n] bool. Returns [P] float."""
    a, ok = answers[:, :k], correct[:, :k]
    votes = (a[:, :, None] == a[:, None, :]).sum(2)  # [P, k] votes for each sample's answer
    winner = votes.argmax(1)  # the first sample holding a top answer
    return ok[np.arange(len(a)), winner].astype(float)
