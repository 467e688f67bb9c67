"""The decode loop: ``search_move`` runs one move's simulations and reads the improved policy
at the root (``gumbel_move``: the Gumbel MuZero root, sequential halving); ``advance`` plays
the chosen token and reuses its subtree; ``search`` writes whole completions move by move."""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import numpy as np
import torch

from .. import gumbel
from ..graph_replay import GraphReplay
from . import dynamic as default_path
from . import static as static_path
from .config import SearchConfig
from .policies import IMPROVED_POLICIES, add_root_noise, choose, root_visit_probs
from .tree import (
    LeafEvaluator,
    Move,
    SearchOutput,
    Tree,
    _at,
    init_tree,
    root_children,
    root_evidence,
    root_q,
    sibling_pairs,
)


def path(cfg: SearchConfig):
    """The module whose ``add_children``, ``evaluate_leaves`` and ``simulate`` run the search:
    ``dynamic`` (the default) or, under ``search.static``, its fixed-shape twin ``static``.
    Looked up when called, so a test can watch either."""
    return static_path if cfg.static else default_path


def simulation(cfg: SearchConfig, graphs: GraphReplay | None) -> Callable[..., None]:
    """The simulation call ``cfg`` names (the fixed-shape one with its CUDA graphs, if any)."""
    if cfg.static:
        return functools.partial(static_path.simulate, graphs=graphs)
    return default_path.simulate


def advance(
    tree: Tree,
    actions: torch.Tensor,
    active: torch.Tensor,
    evaluator: LeafEvaluator,
    cfg: SearchConfig,
    *,
    eos_id: int,
) -> None:
    """Move each active root to the chosen child, creating and evaluating it if new."""
    ops = path(cfg)
    arange = torch.arange(tree.batch, device=actions.device)
    child = tree.children[arange, tree.root, actions]
    child = ops.add_children(tree, tree.root, actions, active & (child < 0), eos_id=eos_id)
    tree.root.copy_(torch.where(active, child, tree.root))
    ops.evaluate_leaves(tree, tree.root[:, None], active[:, None], evaluator)


def search_move(
    tree: Tree,
    active: torch.Tensor,
    evaluator: LeafEvaluator,
    cfg: SearchConfig,
    *,
    improved: Callable[..., torch.Tensor],
    generator: torch.Generator | None,
    eos_id: int,
    depth: int | None = None,
    graphs: GraphReplay | None = None,
) -> Move:
    """One move of every active tree: simulate (unless the root's top prior exceeds
    ``confident_prior``), read the visit distribution and the improved policy at the root,
    choose a child and move the root there. ``depth``: a bound on any tree's depth below
    its root (None: unknown, the context length bounds it). Each simulation call deepens
    a tree by at most one level (a walk ends at the first node it creates), and the move
    takes one level away: that is the bound returned, so a caller knows how many levels a
    walk may take without reading the tree. ``graphs``: ``simulate``'s."""
    if cfg.root == "gumbel":
        return gumbel_move(tree, active, evaluator, cfg, generator=generator, eos_id=eos_id, depth=depth)
    unsure = active & (_at(tree.prior, tree.root).max(1).values <= cfg.confident_prior)
    prior = _at(tree.prior, tree.root).clone()  # before root noise: the improved policy's base
    add_root_noise(tree, unsure, cfg, generator)
    calls = -(-cfg.num_simulations // cfg.leaves_per_call)  # ceil: network calls per move
    calls = calls if bool(unsure.any()) else 0
    depth = tree.tokens.shape[2] - 1 if depth is None else depth
    simulate = simulation(cfg, graphs)
    for c in range(calls):
        simulate(tree, unsure, evaluator, cfg, eos_id=eos_id, levels=depth + c + 1)
    visit_probs = root_visit_probs(tree)  # [B, K]
    policy = improved(
        tree, prior, visit_probs=visit_probs, value_scale=cfg.value_scale, maxvisit_init=cfg.maxvisit_init
    )  # [B, K]
    action = choose(visit_probs, cfg.temperature, generator)
    return _play(
        tree, active, evaluator, cfg, action, visit_probs, policy, prior, unsure, depth + calls - 1, eos_id=eos_id
    )


def gumbel_move(
    tree: Tree,
    active: torch.Tensor,
    evaluator: LeafEvaluator,
    cfg: SearchConfig,
    *,
    generator: torch.Generator | None,
    eos_id: int,
    depth: int | None = None,
) -> Move:
    """``search_move`` with Gumbel MuZero's root (``agents/gumbel.py``): one Gumbel draw per
    root, sequential halving over the top ``max_considered`` of g + log prior with this
    move's simulations (visits a reused subtree brought count for the values, not for the
    halving schedule), the survivor with the best g + log prior + sigma(q) played. A
    confident move (top prior above ``confident_prior``) runs no simulation: the draw then
    samples it from the prior (argmax at ``gumbel_scale=0``)."""
    B, K = tree.batch, tree.prior.shape[2]
    unsure = active & (_at(tree.prior, tree.root).max(1).values <= cfg.confident_prior)
    prior = _at(tree.prior, tree.root).clone()  # [B, K]
    logits = torch.where(prior > 0, prior.clamp(min=1e-30).log(), -torch.inf)
    g = gumbel.sample_gumbel((B, K), generator, cfg.gumbel_scale).to(prior.device)
    valid = (prior > 0).sum(1)
    considered = torch.minimum(valid, torch.full_like(valid, cfg.max_considered))
    table = torch.as_tensor(
        gumbel.considered_visit_table(min(cfg.max_considered, K), cfg.num_simulations), device=prior.device
    )
    root_value = _at(tree.value, tree.root)
    _, before = root_children(tree)  # a reused subtree's visits

    def sigma_q() -> torch.Tensor:
        q, n = root_q(tree)
        qhat = gumbel.completed_q(q, n, prior, root_value, rescale=cfg.rescale_values)
        return gumbel.sigma(qhat, n, value_scale=cfg.value_scale, maxvisit_init=cfg.maxvisit_init)

    def root_policy(t: Tree) -> torch.Tensor:  # the edge each walk takes [B]
        children, _ = root_children(t)
        rows = torch.arange(B, device=children.device)[:, None]
        pending = (t.visits + t.vloss)[rows, children] * (_at(t.children, t.root) >= 0)  # virtual visits count
        return gumbel.root_action(g, logits, sigma_q(), pending - before, considered, table)

    calls = -(-cfg.num_simulations // cfg.leaves_per_call) if bool(unsure.any()) else 0
    depth = tree.tokens.shape[2] - 1 if depth is None else depth
    for c in range(calls):  # the default path: a Gumbel root is refused with search.static
        default_path.simulate(
            tree, unsure, evaluator, cfg, eos_id=eos_id, levels=depth + c + 1, root_policy=root_policy
        )
    sq = sigma_q()
    _, n = root_children(tree)
    action = gumbel.final_action(g, logits, sq, n - before)
    policy = gumbel.improved_policy(logits, sq)
    visit_probs = root_visit_probs(tree)
    return _play(
        tree, active, evaluator, cfg, action, visit_probs, policy, prior, unsure, depth + calls - 1, eos_id=eos_id
    )


def _play(
    tree: Tree,
    active: torch.Tensor,
    evaluator: LeafEvaluator,
    cfg: SearchConfig,
    action: torch.Tensor,
    visit_probs: torch.Tensor,
    policy: torch.Tensor,
    prior: torch.Tensor,
    unsure: torch.Tensor,
    depth: int,
    *,
    eos_id: int,
) -> Move:
    """The end of a move, either root's: read the evidence and the sibling pairs below the
    root, then play ``action`` [B] and return the Move with the move's ``visit_probs`` and
    improved ``policy`` [B, K] (``depth``: the bound below the new root, clamped to the context)."""
    searched = unsure & (cfg.num_simulations > 0)
    informative = searched & root_evidence(tree)
    agree, pairs = sibling_pairs(tree)
    advance(tree, action, active, evaluator, cfg, eos_id=eos_id)
    return Move(
        visit_probs,
        policy,
        searched,
        depth=min(max(depth, 0), tree.tokens.shape[2] - 1),
        informative=informative,
        sibling=(agree * searched, pairs * searched),
        prior_choice=prior.argmax(1),
    )


def search(
    prompts: Sequence[np.ndarray],
    evaluator: LeafEvaluator,
    cfg: SearchConfig,
    *,
    max_len: int,
    vocab_size: int,
    eos_id: int,
    generator: torch.Generator | None = None,
    device="cpu",
) -> SearchOutput:
    """Write one completion per prompt, choosing every token by a tree search."""
    cfg.validate()
    B = len(prompts)
    prompt_len = torch.tensor([len(p) for p in prompts], device=device)
    max_moves = max_len - int(prompt_len.min())
    calls = -(-cfg.num_simulations // cfg.leaves_per_call)
    capacity = 1 + max_moves * (calls * cfg.leaves_per_call + 1)  # each simulation adds <= 1 node
    tree = init_tree(prompts, capacity=capacity, top_k=cfg.top_k, max_len=max_len, device=device)
    evaluator.begin(tree)
    roots = torch.ones(B, 1, dtype=torch.bool, device=device)
    path(cfg).evaluate_leaves(tree, tree.root[:, None], roots, evaluator)
    improved = IMPROVED_POLICIES[cfg.policy_target]  # (a Gumbel root reports its own: the completed-Q policy)
    visit_probs = torch.zeros(B, max_moves, vocab_size, device=device)
    policy = (
        visit_probs
        if cfg.policy_target == "visits" and cfg.root == "puct"
        else torch.zeros(B, max_moves, vocab_size, device=device)
    )
    searched_at = torch.zeros(B, max_moves, dtype=torch.bool, device=device)
    informative_at = torch.zeros(B, max_moves, dtype=torch.bool, device=device)
    agree_total, pairs_total = torch.zeros(B, device=device), torch.zeros(B, device=device)
    prior_token = torch.zeros(B, max_moves, dtype=torch.long, device=device)
    moves = torch.zeros(B, dtype=torch.long, device=device)
    arange = torch.arange(B, device=device)
    depth = 0  # below the roots: nothing yet
    graphs = GraphReplay(cuda=tree.tokens.is_cuda) if cfg.cuda_graph else None
    for m in range(max_moves):
        active = ~_at(tree.terminal, tree.root)
        if not bool(active.any()):
            break
        tokens = _at(tree.child_token, tree.root)  # [B, K] before the root moves on
        move = search_move(
            tree,
            active,
            evaluator,
            cfg,
            improved=improved,
            generator=generator,
            eos_id=eos_id,
            depth=depth,
            graphs=graphs,
        )
        depth = move.depth
        searched_at[:, m] = move.searched
        informative_at[:, m] = move.informative
        prior_token[:, m] = tokens.gather(1, move.prior_choice[:, None]).squeeze(1)
        agree_total += move.sibling[0] * active
        pairs_total += move.sibling[1] * active
        # one table serves both when the improved policy is the visits
        tables = [(visit_probs, move.visit_probs)] + ([(policy, move.policy)] if policy is not visit_probs else [])
        for out, dist in tables:
            full = torch.zeros(B, vocab_size, device=device).scatter_add_(1, tokens, dist)
            out[:, m] = torch.where(active[:, None], full, 0.0)
        moves += active.long()
    final, made = tree.root, int(moves.max()) if B else 0
    if cfg.static and bool((tree.num_nodes > capacity).any()):  # static node creation cannot check as it goes
        raise RuntimeError("search tree is full; raise its capacity")
    return SearchOutput(
        tokens=tree.tokens[arange, final],
        length=tree.length[arange, final],
        prompt_length=prompt_len,
        visit_probs=visit_probs[:, :made],
        policy=policy[:, :made],
        moves=moves,
        searched=searched_at[:, :made],
        informative=informative_at[:, :made],
        sibling_agree=agree_total,
        sibling_pairs=pairs_total,
        prior_token=prior_token[:, :made],
    )
