"""One simulation call over a batch of trees: select ``leaves_per_call`` leaves per tree by
PUCT with virtual loss (``select``, the walk), evaluate the new ones (``evaluate_leaves``),
back the values up (``simulate``). It reads the host whenever that saves work: walks stop
when all have, only new leaves are evaluated, and on CPU the walk and node creation run on
numpy views of the tree. The fixed-shape variant for a GPU, behind the same functions, is
``static.py``."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from .config import SearchConfig
from .tree import LeafEvaluator, States, Tree, _at_least, _rows, _xp, add_children, backup, walk_tables


def puct_scores(n, w, prior, fpu, c_puct: float):
    """Q + U for the K children of one node per tree [B, K], from their visits ``n`` (virtual
    visits included, 0 where a child does not exist), value sums ``w``, priors, and the
    parent's value ``fpu`` [B]: Q of an unvisited child is its parent's value (first-play
    urgency at the parent's estimate); virtual visits count as visits with value 0.
    Torch tensors or numpy arrays: the same float32 operations, the same results."""
    xp = _xp(n)
    q = xp.where(n > 0, w / _at_least(n, 1e-9), fpu[:, None])
    n_parent = n.sum(1)[:, None]
    u = c_puct * prior * xp.sqrt(_at_least(n_parent, 1.0)) / (1.0 + n)
    return q + u


def select(
    tree: Tree,
    active: torch.Tensor,
    *,
    c_puct: float,
    eos_id: int,
    virtual_loss: float = 0.0,
    levels: int | None = None,
    first: torch.Tensor | None = None,
) -> torch.Tensor:
    """Walk from each root by PUCT to a leaf; create the node if the edge is new.

    Returns leaves [B] (the root itself for inactive trees). A leaf is a node not yet
    expanded (new, or created by an earlier selection of this batch) or a terminal node.
    A walk that takes an edge not taken before ends there; the new nodes of all trees are
    created together once every walk has ended. ``virtual_loss``: each node on an active
    walk's path (root and leaf included) gets that many virtual visits (``Tree.vloss``),
    which later walks of the batch see; this walk reads the counts as they were before it.
    ``levels``: a bound on the edges a walk takes (the tree's depth below the root, plus
    one for the new edge; default the context length, which always holds). ``first`` [B]:
    the edge each walk takes from its root (a Gumbel root's choice), instead of PUCT's.
    """
    levels = tree.tokens.shape[2] if levels is None else levels
    tables, base = walk_tables(tree)
    start = base + tree.root
    if active.device.type == "cpu":
        # a level is some 30 ops on [B, K] rows: through torch's dispatcher ~3.5 us each, as
        # numpy ops on views of the same memory half that (the walk is most of a CPU search)
        arrays = [t.numpy() for t in (*tables, base, start, active)]
        amount = arrays[6].dtype.type(virtual_loss)  # vloss's own float type: no float64 detour
        node, new, action = (
            torch.from_numpy(x)
            for x in _walk(
                *arrays,
                c_puct=c_puct,
                virtual_loss=amount,
                levels=levels,
                first=None if first is None else first.numpy(),
            )
        )
    else:
        node, new, action = _walk(
            *tables, base, start, active, c_puct=c_puct, virtual_loss=virtual_loss, levels=levels, first=first
        )
    if not bool(new.any()):
        return node
    leaf = torch.where(new, add_children(tree, node, action, new, eos_id=eos_id), node)
    if virtual_loss:
        tree.vloss.view(-1)[base + leaf] += new.to(tree.vloss.dtype) * virtual_loss  # the new nodes: their paths' ends
    return leaf


def _walk_level(
    at, stop, new, action, visits, value_sum, value, children, prior, leaf, base, row_start, c_puct: float, forced=None
):
    """One level of every walk (``_walk``'s tables; at, stop, new, action [B] its state):
    a pure function, so ``search.compile`` can fuse it. ``forced`` [B]: the edge to take
    instead of PUCT's. Returns the new state and the node each walk entered (-1: none).
    ``static.py``'s fixed-shape walk runs the same levels."""
    xp = _xp(at)
    rows_of = (lambda t, i: t.take(i, axis=0)) if xp is np else (lambda t, i: t.index_select(0, i))
    kids = rows_of(children, at)  # [B, K] node ids, -1: none yet
    if forced is None:
        flat = base[:, None] + _at_least(kids, 0)  # [B, K]
        n = visits.take(flat) * (kids >= 0)
        a = puct_scores(n, value_sum.take(flat), rows_of(prior, at), value.take(at), c_puct).argmax(1)  # [B]
    else:
        a = forced
    child = kids.take(row_start + a)
    fresh = (child < 0) & ~stop
    action = xp.where(fresh, a, action)
    done = stop | fresh
    at = xp.where(done, at, base + child)
    return at, done | leaf.take(at), new | fresh, action, xp.where(done, -1, at)


def _walk(
    visits,
    value_sum,
    value,
    children,
    prior,
    leaf,
    vloss,
    base,
    at,
    active,
    *,
    c_puct: float,
    virtual_loss: float,
    levels: int,
    first=None,
):
    """The selection walk over flat tables (torch tensors, or numpy arrays): visits (virtual
    included), value sums, values [B * N]; children (-1: none yet), priors [B * N, K]; leaf
    [B * N] (a walk stops there); vloss [B * N] (written: ``virtual_loss`` on each node the
    walk enters); base [B] (each tree's node 0), at [B] the roots, active [B]. One level per
    loop over all trees: rows [B, K] of each table, read with ``take`` (numpy's fastest
    gather; flat indices, each tree's its own), until every walk has stopped (a host read
    per level), at most ``levels`` levels (``first`` [B]: the first level's edges, given).
    Returns (node [B], new [B]: the walk ended on an edge without a node, action [B]: that
    edge)."""
    xp = _xp(at)
    K = children.shape[1]
    row_start = xp.arange(len(at)) * K  # [B] flat index of each row of [B, K]
    if virtual_loss:
        vloss[at] += virtual_loss * active
    stop = ~active | leaf.take(at)
    new = stop & False
    action = at * 0
    entered = []  # per level: the node entered, or -1
    for depth in range(levels):
        if bool(stop.all()):
            break
        forced = {"forced": first} if depth == 0 and first is not None else {}
        at, stop, new, action, entered_now = _walk_level(
            at, stop, new, action, visits, value_sum, value, children, prior, leaf, base, row_start, c_puct, **forced
        )
        entered.append(entered_now)
    else:  # every level ran: a walk not ended now would have gone on
        if not bool(stop.all()):
            raise RuntimeError(f"a selection walk went deeper than its bound of {levels} levels")
    if virtual_loss and entered:  # one write for the whole walk: a path enters each node once
        nodes = xp.concatenate(entered)
        vloss[nodes[nodes >= 0]] += virtual_loss
    return at - base, new, action


# -- evaluation --------------------------------------------------------------------------------


def evaluate_leaves(tree: Tree, leaves: torch.Tensor, active: torch.Tensor, evaluator: LeafEvaluator) -> None:
    """Expand new non-terminal leaves and value new terminal ones, each state once (in
    (tree, node) order): leaves [B, W], active [B, W]."""
    B, N, L = tree.tokens.shape
    flat = torch.unique((_rows(B, leaves.device)[:, None] * N + leaves)[active])  # [m] sorted, distinct
    flat = flat[~tree.expanded.view(-1)[flat]]
    if len(flat) == 0:
        return
    term = tree.terminal.view(-1)[flat]

    def states(at: torch.Tensor) -> States:
        return States(
            at // N,
            at % N,
            tree.tokens.view(B * N, L).index_select(0, at),
            tree.length.view(-1)[at],
            tree.node_at.view(B * N, L).index_select(0, at),
        )

    if bool((~term).any()):
        at = flat[~term]
        out = evaluator.expand(states(at))
        tree.prior.view(B * N, -1)[at] = out.prior.to(tree.prior.dtype)
        tree.child_token.view(B * N, -1)[at] = out.child_token
        tree.value.view(-1)[at] = out.value.to(tree.value.dtype)
        tree.net_value.view(-1)[at] = (out.value if out.net_value is None else out.net_value).to(tree.value.dtype)
        tree.verdict_value.view(-1)[at] = (out.value if out.verdict_value is None else out.verdict_value).to(
            tree.value.dtype
        )
        if out.verdict is not None:
            tree.verdict.view(-1)[at] = out.verdict
    if bool(term.any()):
        at = flat[term]
        tree.value.view(-1)[at] = evaluator.terminal_value(states(at)).to(tree.value.dtype)
        tree.verdict_value.view(-1)[at] = tree.value.view(-1)[at]
        tree.verdict.view(-1)[at] = not getattr(evaluator, "terminal_from_network", False)
    tree.expanded.view(-1)[flat] = True


def _select_leaves(
    tree: Tree,
    active: torch.Tensor,
    cfg: SearchConfig,
    *,
    eos_id: int,
    levels: int | None,
    root_policy: Callable[[Tree], torch.Tensor] | None = None,
) -> torch.Tensor:
    """``leaves_per_call`` selections per tree -> leaves [B, W]. ``root_policy``: the root
    edge each walk takes [B], asked before each selection (it sees the earlier ones'
    virtual visits)."""
    leaves = [
        select(
            tree,
            active,
            c_puct=cfg.c_puct,
            eos_id=eos_id,
            virtual_loss=cfg.virtual_loss,
            levels=levels,
            first=None if root_policy is None else root_policy(tree),
        )
        for _ in range(cfg.leaves_per_call)
    ]
    return torch.stack(leaves, 1)


def simulate(
    tree: Tree,
    active: torch.Tensor,
    evaluator: LeafEvaluator,
    cfg: SearchConfig,
    *,
    eos_id: int,
    levels: int | None = None,
    root_policy: Callable[[Tree], torch.Tensor] | None = None,
) -> None:
    """One batch of ``leaves_per_call`` simulations per active tree; ``levels``: a bound on
    the edges a walk takes (``select``). ``root_policy``: ``_select_leaves``' (a Gumbel
    root)."""
    stacked = _select_leaves(tree, active, cfg, eos_id=eos_id, levels=levels, root_policy=root_policy)  # [B, W]
    evaluate_leaves(tree, stacked, active[:, None].expand_as(stacked), evaluator)
    tree.vloss.zero_()
    backup(tree, stacked, active[:, None].expand_as(stacked))
