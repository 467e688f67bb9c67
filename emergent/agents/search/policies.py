"""Policies at the root: Dirichlet noise on the root's prior, the improved policy a move's
search yields (visit counts, or Gumbel MuZero's completed Q: ``IMPROVED_POLICIES``), and the
choice of the move from it."""

from __future__ import annotations

from typing import Callable

import torch

from .. import gumbel
from .config import SearchConfig
from .tree import Tree, _at, root_children, root_q

# -- moves ------------------------------------------------------------------------------------


def add_root_noise(tree: Tree, active: torch.Tensor, cfg: SearchConfig, generator: torch.Generator | None) -> None:
    if cfg.dirichlet_fraction <= 0:
        return
    K = tree.prior.shape[2]
    conc = torch.full((int(active.sum()), K), cfg.dirichlet_alpha)
    g = _gamma(conc, generator)  # torch's Dirichlet takes no generator; Gammas drawn here do
    noise = (g / g.sum(1, keepdim=True)).to(tree.prior.device)
    b = torch.arange(tree.batch, device=active.device)[active]
    r = tree.root[active]
    tree.prior[b, r] = (1 - cfg.dirichlet_fraction) * tree.prior[b, r] + cfg.dirichlet_fraction * noise


def _gamma(conc: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Gamma(conc, 1) samples from an explicit generator (Marsaglia-Tsang, boosted for conc < 1)."""
    a = conc + 1.0
    d = a - 1.0 / 3.0
    c = 1.0 / torch.sqrt(9.0 * d)
    out = torch.empty_like(conc)
    todo = torch.ones_like(conc, dtype=torch.bool)
    while bool(todo.any()):
        x = torch.randn(conc.shape, generator=generator)
        v = (1 + c * x) ** 3
        u = torch.rand(conc.shape, generator=generator)
        ok = (v > 0) & (torch.log(u.clamp(min=1e-30)) < 0.5 * x**2 + d - d * v + d * torch.log(v.clamp(min=1e-30)))
        take = todo & ok
        out[take] = (d * v)[take]
        todo &= ~ok
    u = torch.rand(conc.shape, generator=generator)
    return out * u ** (1.0 / conc)  # Gamma(a) * U^(1/alpha) ~ Gamma(alpha)


def root_visit_probs(tree: Tree, prior: torch.Tensor | None = None, **_) -> torch.Tensor:
    """Visit distribution over the root's children [B, K]; the prior where nothing was
    visited (the root's current prior; ``prior`` is accepted for a common signature)."""
    _, n = root_children(tree)
    total = n.sum(1, keepdim=True)
    return torch.where(total > 0, n / total.clamp(min=1e-9), _at(tree.prior, tree.root))


def completed_q_policy(
    tree: Tree,
    prior: torch.Tensor,
    *,
    value_scale: float,
    maxvisit_init: float,
    visit_probs: torch.Tensor | None = None,
) -> torch.Tensor:
    """softmax(log prior + sigma(completed Q)) over the root's children [B, K] (mctx's
    ``qtransform_completed_by_mix_value`` without rescaling: values are already P(correct)
    in [0, 1]). An unvisited child's Q is the mixed value: the root's own evaluation
    averaged with the prior-weighted Q of the visited children. ``prior`` is the root's
    prior before any Dirichlet noise."""
    q, n = root_q(tree)  # [B, K], [B, K]
    completed = gumbel.completed_q(q, n, prior, _at(tree.value, tree.root), rescale=False)
    sigma = gumbel.sigma(completed, n, value_scale=value_scale, maxvisit_init=maxvisit_init)
    return gumbel.improved_policy(prior.clamp(min=1e-30).log(), sigma)


def visits_policy(tree: Tree, prior: torch.Tensor, *, visit_probs: torch.Tensor, **_) -> torch.Tensor:
    """AlphaZero's improved policy: the visit distribution itself."""
    return visit_probs


# search.policy_target -> the improved policy over the root's children [B, K], from the tree,
# the root's prior before noise, and the visit distribution
IMPROVED_POLICIES: dict[str, Callable[..., torch.Tensor]] = {"visits": visits_policy, "completed_q": completed_q_policy}


def choose(probs: torch.Tensor, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
    """Pick a child per tree from its visit distribution [B, K]: argmax at temperature 0."""
    if temperature <= 0:
        return probs.argmax(1)
    p = probs.clamp(min=0) ** (1.0 / temperature)
    # a finished tree (terminal root) has an all-zero row; its choice is ignored downstream
    p = torch.where(p.sum(1, keepdim=True) > 0, p, 1.0)
    p = p / p.sum(1, keepdim=True)
    return torch.multinomial(p.cpu(), 1, generator=generator).squeeze(1).to(probs.device)
