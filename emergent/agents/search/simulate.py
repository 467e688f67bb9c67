"""One simulation call over a batch of trees: select ``leaves_per_call`` leaves per tree by
PUCT with virtual loss (``select``, the walk), evaluate the new ones (``evaluate_leaves``),
back the values up (``simulate``). The fixed-shape variant (``search.static``: no host read
inside a move, CUDA graphs, compiled walk levels) lives here beside the default."""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import numpy as np
import torch

from ..graph_replay import GraphReplay
from .config import SearchConfig
from .tree import LeafEvaluator, States, Tree, _at_least, _rows, _xp, add_children, backup


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
    static: bool = False,
    compiled: bool = False,
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
    one for the new edge; default the context length, which always holds). ``static``: in
    torch, exactly ``levels`` masked levels and fixed-shape node creation: no host sync.
    ``compiled``: each torch walk level through ``torch.compile``. ``first`` [B]: the edge
    each walk takes from its root (a Gumbel root's choice), instead of PUCT's.
    """
    B, N, K = tree.children.shape
    levels = tree.tokens.shape[2] if levels is None else levels
    base = _rows(B, active.device) * N  # [B] flat index of each tree's node 0
    tables = (
        (tree.visits + tree.vloss).view(-1),
        tree.value_sum.view(-1),
        tree.value.view(-1),
        tree.children.view(B * N, K),
        tree.prior.view(B * N, K),
        (~tree.expanded | tree.terminal).view(-1),
        tree.vloss.view(-1),
    )
    start = base + tree.root
    if active.device.type == "cpu" and not static:
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
            *tables,
            base,
            start,
            active,
            c_puct=c_puct,
            virtual_loss=virtual_loss,
            levels=levels,
            early_exit=not static,
            level=_compiled_level() if compiled else _walk_level,
            first=first,
        )
    if not static and not bool(new.any()):
        return node
    leaf = torch.where(new, add_children(tree, node, action, new, eos_id=eos_id, static=static), node)
    if virtual_loss:
        tree.vloss.view(-1)[base + leaf] += new.to(tree.vloss.dtype) * virtual_loss  # the new nodes: their paths' ends
    return leaf


def _walk_level(
    at, stop, new, action, visits, value_sum, value, children, prior, leaf, base, row_start, c_puct: float, forced=None
):
    """One level of every walk (``_walk``'s tables; at, stop, new, action [B] its state):
    a pure function, so ``search.compile`` can fuse it. ``forced`` [B]: the edge to take
    instead of PUCT's. Returns the new state and the node each walk entered (-1: none)."""
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


@functools.lru_cache(maxsize=1)
def _compiled_level() -> Callable:
    """``_walk_level`` through ``torch.compile`` (fixed shapes): one or two fused kernels a
    level instead of some 35."""
    return torch.compile(_walk_level, fullgraph=True, dynamic=False)


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
    early_exit: bool = True,
    level: Callable = _walk_level,
    first=None,
):
    """The selection walk over flat tables (torch tensors, or numpy arrays): visits (virtual
    included), value sums, values [B * N]; children (-1: none yet), priors [B * N, K]; leaf
    [B * N] (a walk stops there); vloss [B * N] (written: ``virtual_loss`` on each node the
    walk enters); base [B] (each tree's node 0), at [B] the roots, active [B]. One level per
    loop over all trees: rows [B, K] of each table, read with ``take`` (numpy's fastest
    gather; flat indices, each tree's its own), at most ``levels`` levels: with
    ``early_exit`` it stops once every walk has (a host read per level), else it runs them
    all, a walk that has stopped staying where it is (``level``: ``_walk_level``, or its
    compiled form; ``first`` [B]: the first level's edges, given). Returns (node [B], new
    [B]: the walk ended on an edge without a node, action [B]: that edge)."""
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
        if early_exit and bool(stop.all()):
            break
        forced = {"forced": first} if depth == 0 and first is not None else {}
        at, stop, new, action, entered_now = level(
            at, stop, new, action, visits, value_sum, value, children, prior, leaf, base, row_start, c_puct, **forced
        )
        entered.append(entered_now)
    else:  # every level ran: with early exits, a walk not ended now would have gone on
        if early_exit and not bool(stop.all()):
            raise RuntimeError(f"a selection walk went deeper than its bound of {levels} levels")
    if virtual_loss and entered:  # one write for the whole walk: a path enters each node once
        nodes = xp.concatenate(entered)
        if early_exit:
            vloss[nodes[nodes >= 0]] += virtual_loss
        else:  # fixed shape: the -1s add 0 (to node 0 of tree 0)
            vloss.index_add_(0, nodes.clamp(min=0), (nodes >= 0).to(vloss.dtype) * virtual_loss)
    return at - base, new, action


# -- evaluation --------------------------------------------------------------------------------


def evaluate_leaves(
    tree: Tree, leaves: torch.Tensor, active: torch.Tensor, evaluator: LeafEvaluator, *, static: bool = False
) -> None:
    """Expand new non-terminal leaves and value new terminal ones, each state once (in
    (tree, node) order). ``static``: all B x W leaves in one call, fixed shapes."""
    if static:
        return _evaluate_leaves_static(tree, leaves, active, evaluator)
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
        if out.verdict is not None:
            tree.verdict.view(-1)[at] = out.verdict
    if bool(term.any()):
        at = flat[term]
        tree.value.view(-1)[at] = evaluator.terminal_value(states(at)).to(tree.value.dtype)
        tree.verdict.view(-1)[at] = not getattr(evaluator, "terminal_from_network", False)
    tree.expanded.view(-1)[flat] = True


def _evaluate_leaves_static(tree: Tree, leaves: torch.Tensor, active: torch.Tensor, evaluator: LeafEvaluator) -> None:
    """``evaluate_leaves`` over all leaves [B, W] at once, host sync only for new terminal
    leaves valued by the host (``terminal_from_network`` false)."""
    _host_terminal_values(tree, _expand_static(tree, leaves, active, evaluator), evaluator)


class _Evaluated(NamedTuple):
    flat: torch.Tensor  # [M] the leaves' flat node indices, tree-major
    states: States  # their states, ``write`` marking the new ones


def _expand_static(tree: Tree, leaves: torch.Tensor, active: torch.Tensor, evaluator: LeafEvaluator) -> _Evaluated:
    """The fixed-shape part: one ``expand`` of all leaves [B, W], priors and values written
    for the new ones (terminal leaves get the network's value). A leaf is new where it is
    active, not expanded, and not an earlier column's leaf of the same tree (``write``);
    what the others get is written to the scratch node."""
    B, N, L = tree.tokens.shape
    W = leaves.shape[1]
    flat = _rows(B, leaves.device)[:, None] * N + leaves  # [B, W]
    earlier = torch.ones(W, W, dtype=torch.bool, device=leaves.device).tril(-1)  # [w, w']: w' < w
    seen = ((flat[:, :, None] == flat[:, None, :]) & earlier).any(2)  # [B, W]
    flat = flat.reshape(-1)  # [M] tree-major
    write = (active & ~seen).reshape(-1) & ~tree.expanded.view(-1)[flat]
    term = tree.terminal.view(-1)[flat]
    states = States(
        flat // N,
        flat % N,
        tree.tokens.view(B * N, L).index_select(0, flat),
        tree.length.view(-1)[flat],
        tree.node_at.view(B * N, L).index_select(0, flat),
        write,
    )
    out = evaluator.expand(states)
    scratch = states.rows * N + N - 1
    to = torch.where(write & ~term, flat, scratch)  # expansions: non-terminal leaves
    tree.prior.view(B * N, -1)[to] = out.prior.to(tree.prior.dtype)
    tree.child_token.view(B * N, -1)[to] = out.child_token
    to = torch.where(write, flat, scratch)
    tree.value.view(-1)[to] = out.value.to(tree.value.dtype)
    tree.expanded.view(-1)[to] = True
    if out.verdict is not None:
        tree.verdict.view(-1)[to] = out.verdict & ~term
    return _Evaluated(flat, states)


def _host_terminal_values(tree: Tree, done: _Evaluated, evaluator: LeafEvaluator) -> None:
    """New terminal leaves valued on the host (the verifier), unless ``terminal_from_network``:
    the one sync of a static simulation call."""
    if getattr(evaluator, "terminal_from_network", False):
        return
    at = (done.states.write & tree.terminal.view(-1)[done.flat]).nonzero().squeeze(1)
    if len(at):
        tree.value.view(-1)[done.flat[at]] = evaluator.terminal_value(done.states.subset(at)).to(tree.value.dtype)
        tree.verdict.view(-1)[done.flat[at]] = True


_LEVEL_BUCKET = 8  # walk levels round up to a multiple of this under search.cuda_graph: a few graphs per search


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
            static=cfg.static,
            compiled=cfg.compile,
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
    graphs: GraphReplay | None = None,
    root_policy: Callable[[Tree], torch.Tensor] | None = None,
) -> None:
    """One batch of ``leaves_per_call`` simulations per active tree; ``levels``: a bound on
    the edges a walk takes (``select``). ``graphs`` (``search.cuda_graph``): the selections
    and the leaves' expansion replayed from a CUDA graph, one per bucket of ``levels``
    (extra levels are masked no-ops), with ``active`` copied into the buffer it reads.
    ``root_policy``: ``_select_leaves``' (a Gumbel root; not with ``graphs``)."""
    if graphs is not None:
        L = tree.tokens.shape[2]
        bucket = min(-(-(L if levels is None else levels) // _LEVEL_BUCKET) * _LEVEL_BUCKET, L)
        buffer = graphs.buffer("active", active)

        def step():  # a function of fixed buffers: the tree, the evaluator's tables, ``buffer``
            stacked = _select_leaves(tree, buffer, cfg, eos_id=eos_id, levels=bucket)
            done = _expand_static(tree, stacked, buffer[:, None].expand_as(stacked), evaluator)
            return stacked, done

        stacked, done = graphs(bucket, step, counters=evaluator)
        _host_terminal_values(tree, done, evaluator)
    else:
        stacked = _select_leaves(tree, active, cfg, eos_id=eos_id, levels=levels, root_policy=root_policy)  # [B, W]
        evaluate_leaves(tree, stacked, active[:, None].expand_as(stacked), evaluator, static=cfg.static)
    tree.vloss.zero_()
    backup(tree, stacked, active[:, None].expand_as(stacked), static=cfg.static)
