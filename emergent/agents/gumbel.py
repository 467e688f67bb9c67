"""Gumbel MuZero's root (Danihelka et al. 2022, "Policy improvement by planning with
Gumbel"), as small pure functions over [B, K] tensors, as in mctx.

At the root of each move the search samples Gumbel noise g(a) once, then:
  * spends its simulations by **sequential halving** over the m considered actions: the
    top m of g + logits, each given an equal share of a phase's simulations, the weaker
    half dropped after each phase by g + logits + sigma(q);
  * plays the surviving action with the most visits and the highest g + logits + sigma(q):
    without noise this is the best action by value and prior, with noise it is a sample
    from the improved policy (the Gumbel-max trick), so no Dirichlet noise is needed;
  * reports the **completed-Q improved policy** softmax(logits + sigma(completed Q)), which
    with every child's Q known is the policy that maximises expected Q under a KL penalty.

Stateless, as mctx: which action a simulation visits follows from the visit counts alone
(``considered_visit_table``): an action is eligible when its visits equal the count the
halving schedule gives that simulation, and the eligible one with the best score is taken.
Shapes: B roots, K children each, m considered actions, n simulations.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch


def considered_visit_sequence(m: int, n: int) -> tuple[int, ...]:
    """For each of ``n`` simulations, the visit count the action it goes to has before it,
    under sequential halving over ``m`` actions (mctx's ``get_sequence_of_considered_visits``).
    m=4, n=8: (0, 0, 0, 0, 1, 1, 2, 2): one visit to each of four, then two to each of two."""
    if m <= 1:
        return tuple(range(n))
    log2m = math.ceil(math.log2(m))
    out: list[int] = []
    visits = [0] * m
    considered = m
    while len(out) < n:
        extra = max(1, n // (log2m * considered))
        for _ in range(extra):
            out += visits[:considered]
            for i in range(considered):
                visits[i] += 1
        considered = max(2, considered // 2)
    return tuple(out[:n])


@functools.lru_cache(maxsize=32)
def considered_visit_table(m: int, n: int) -> np.ndarray:
    """[m + 1, max(n, 1)] int64: row j the sequence for j considered actions (a root with
    fewer valid children than ``m`` halves over those it has)."""
    table = np.zeros((m + 1, max(n, 1)), dtype=np.int64)
    for j in range(1, m + 1):
        table[j, :n] = considered_visit_sequence(j, n)
    return table


def sample_gumbel(shape, generator: torch.Generator | None, scale: float = 1.0) -> torch.Tensor:
    """``scale`` x Gumbel(0, 1) draws [shape] on CPU from an explicit generator."""
    if scale == 0:
        return torch.zeros(shape)
    u = torch.rand(shape, generator=generator).clamp(1e-20, 1 - 1e-7)
    return -scale * torch.log(-torch.log(u))


def completed_q(
    q: torch.Tensor, visits: torch.Tensor, prior: torch.Tensor, value: torch.Tensor, *, rescale: bool = True
) -> torch.Tensor:
    """Each child's Q where it was visited, the mixed value where not [B, K] (mctx's
    ``qtransform_completed_by_mix_value``): the mixed value is the root's own evaluation
    ``value`` [B] averaged with the prior-weighted Q of the visited children, weighted by
    their visits. ``rescale``: min-max over the K children to [0, 1] (mctx's default), so
    sigma's scale does not depend on how far apart the values happen to lie."""
    seen = visits > 0
    p = prior.clamp(min=torch.finfo(prior.dtype).tiny)
    p_seen = (p * seen).sum(1, keepdim=True)
    weighted = (p * q * seen).sum(1, keepdim=True) / p_seen.clamp(min=torch.finfo(prior.dtype).tiny)
    n = visits.sum(1, keepdim=True)
    mixed = (value[:, None] + n * weighted) / (n + 1)
    out = torch.where(seen, q, mixed)
    if rescale:
        lo, hi = out.min(1, keepdim=True).values, out.max(1, keepdim=True).values
        out = (out - lo) / (hi - lo).clamp(min=1e-8)
    return out


def sigma(qhat: torch.Tensor, visits: torch.Tensor, *, value_scale: float, maxvisit_init: float) -> torch.Tensor:
    """sigma(q) = (maxvisit_init + max_a N(a)) * value_scale * q [B, K]: the weight of the
    values against the prior logits grows with the evidence behind them."""
    return (maxvisit_init + visits.max(1, keepdim=True).values) * value_scale * qhat


def score_considered(
    considered_visit: torch.Tensor,
    gumbel: torch.Tensor,
    logits: torch.Tensor,
    sigma_q: torch.Tensor,
    visits: torch.Tensor,
) -> torch.Tensor:
    """g + logits + sigma(q) where an action's visits equal ``considered_visit`` [B] (or
    [B, 1]), -inf elsewhere [B, K] (mctx's ``score_considered``)."""
    logits = logits - logits.max(1, keepdim=True).values
    penalty = torch.where(visits == considered_visit.reshape(-1, 1), 0.0, -torch.inf)
    return (gumbel + logits + sigma_q).clamp(min=-1e9) + penalty


def root_action(
    gumbel: torch.Tensor,
    logits: torch.Tensor,
    sigma_q: torch.Tensor,
    visits: torch.Tensor,
    num_considered: torch.Tensor,
    table: torch.Tensor,
) -> torch.Tensor:
    """The action the next simulation visits at each root [B]: the eligible one (by the
    halving schedule ``table`` [m + 1, n], row ``num_considered`` [B], column the number of
    simulations the root has had this move, ``visits.sum``) with the best score."""
    index = visits.sum(1).long().clamp(max=table.shape[1] - 1)
    considered = table[num_considered, index]
    return score_considered(considered, gumbel, logits, sigma_q, visits).argmax(1)


def final_action(
    gumbel: torch.Tensor, logits: torch.Tensor, sigma_q: torch.Tensor, visits: torch.Tensor
) -> torch.Tensor:
    """The action to play [B]: among the most visited (the survivors of the halving), the
    best g + logits + sigma(q)."""
    return score_considered(visits.max(1).values, gumbel, logits, sigma_q, visits).argmax(1)


def improved_policy(logits: torch.Tensor, sigma_q: torch.Tensor) -> torch.Tensor:
    """softmax(logits + sigma(completed Q)) [B, K]."""
    return torch.softmax(logits + sigma_q, -1)
