"""The fixed-shape simulation call, for a GPU (``search.static``): the same functions as
``dynamic.py`` (``select``, ``add_children``, ``evaluate_leaves``, ``simulate``) and the same
trees (``tests/test_search.py`` checks them equal), with nothing read back inside a move, so a
GPU's launch queue never drains. Each walk runs a host-known bound of masked levels instead of
stopping when every walk has; node creation writes every tree (a tree adding nothing writes
its scratch node, N - 1); one network call evaluates all B x leaves_per_call selected leaves;
backups scatter over all L positions. ``search.compile`` fuses each walk level with
``torch.compile``; ``search.cuda_graph`` replays a whole call from a CUDA graph. On a CPU it
is slower than the default path, which reads the host whenever that saves work.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import torch

from ..graph_replay import GraphReplay
from .config import SearchConfig
from .dynamic import _walk_level
from .tree import LeafEvaluator, States, Tree, _rows, backup, walk_tables


def select(
    tree: Tree,
    active: torch.Tensor,
    *,
    c_puct: float,
    eos_id: int,
    virtual_loss: float = 0.0,
    levels: int | None = None,
    compiled: bool = False,
) -> torch.Tensor:
    """``dynamic.select`` in fixed shapes: exactly ``levels`` masked walk levels (each through
    ``torch.compile`` when ``compiled``), then one node written per tree. Returns leaves [B]."""
    levels = tree.tokens.shape[2] if levels is None else levels
    tables, base = walk_tables(tree)
    node, new, action = _walk(
        *tables,
        base,
        base + tree.root,
        active,
        c_puct=c_puct,
        virtual_loss=virtual_loss,
        levels=levels,
        level=_compiled_level() if compiled else _walk_level,
    )
    leaf = torch.where(new, add_children(tree, node, action, new, eos_id=eos_id), node)
    if virtual_loss:
        tree.vloss.view(-1)[base + leaf] += new.to(tree.vloss.dtype) * virtual_loss  # the new nodes: their paths' ends
    return leaf


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
    level: Callable = _walk_level,
):
    """``dynamic._walk`` (its tables, in torch) for exactly ``levels`` levels, a walk that
    has stopped staying where it is, and the virtual visits written with one fixed-shape
    scatter (the -1s of walks that entered nothing add 0, to node 0 of tree 0)."""
    K = children.shape[1]
    row_start = torch.arange(len(at), device=at.device) * K  # [B] flat index of each row of [B, K]
    if virtual_loss:
        vloss[at] += virtual_loss * active
    stop = ~active | leaf.take(at)
    new = stop & False
    action = at * 0
    entered = []  # per level: the node entered, or -1
    for _ in range(levels):
        at, stop, new, action, entered_now = level(
            at, stop, new, action, visits, value_sum, value, children, prior, leaf, base, row_start, c_puct
        )
        entered.append(entered_now)
    if virtual_loss and entered:
        nodes = torch.cat(entered)
        vloss.index_add_(0, nodes.clamp(min=0), (nodes >= 0).to(vloss.dtype) * virtual_loss)
    return at - base, new, action


def add_children(
    tree: Tree, nodes: torch.Tensor, actions: torch.Tensor, create: torch.Tensor, *, eos_id: int
) -> torch.Tensor:
    """``tree.add_children`` in fixed shapes (no host sync): every tree writes one node, its
    next free one where ``create`` holds and the scratch node (N - 1) where not. The capacity
    ``search`` allocates cannot run out, and here nothing can check it without a sync:
    ``search`` checks once, at its end. Returns the child per tree [B]."""
    B, N, L = tree.tokens.shape
    K = tree.children.shape[2]
    tokens, node_at = tree.tokens.view(B * N, L), tree.node_at.view(B * N, L)
    length, terminal = tree.length.view(-1), tree.terminal.view(-1)
    children, child_token = tree.children.view(B * N, K), tree.child_token.view(B * N, K)
    rows = torch.arange(B, device=nodes.device)
    parent = rows * N + nodes  # [B] flat indices
    new = tree.num_nodes.clone()  # [B] each tree's next free node
    made = rows * N + torch.where(create, new, N - 1)
    tok = child_token[parent, actions]
    n = length[parent].clamp(max=L - 1)  # the position the token takes (a tree adding nothing may sit at a full state)
    for table, at_n in ((tokens, tok), (node_at, new)):  # the parent's row plus one position
        row = table.index_select(0, parent)
        row[rows, n] = at_n
        table[made] = row
    length[made] = n + 1
    terminal[made] = (tok == eos_id) | (n + 1 >= L)
    child = torch.where(create, new, children[parent, actions])
    children[parent, actions] = child
    tree.num_nodes.add_(create)
    return child


class _Evaluated(NamedTuple):
    flat: torch.Tensor  # [M] the leaves' flat node indices, tree-major
    states: States  # their states, ``write`` marking the new ones


def evaluate_leaves(tree: Tree, leaves: torch.Tensor, active: torch.Tensor, evaluator: LeafEvaluator) -> None:
    """``dynamic.evaluate_leaves`` over all leaves [B, W] at once, host sync only for new
    terminal leaves valued by the host (``terminal_from_network`` false)."""
    _host_terminal_values(tree, _expand(tree, leaves, active, evaluator), evaluator)


def _expand(tree: Tree, leaves: torch.Tensor, active: torch.Tensor, evaluator: LeafEvaluator) -> _Evaluated:
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
    tree.net_value.view(-1)[to] = (out.value if out.net_value is None else out.net_value).to(tree.value.dtype)
    tree.verdict_value.view(-1)[to] = (out.value if out.verdict_value is None else out.verdict_value).to(
        tree.value.dtype
    )
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
        tree.verdict_value.view(-1)[done.flat[at]] = tree.value.view(-1)[done.flat[at]]
        tree.verdict.view(-1)[done.flat[at]] = True


_LEVEL_BUCKET = 8  # walk levels round up to a multiple of this under search.cuda_graph: a few graphs per search


def _select_leaves(tree: Tree, active: torch.Tensor, cfg: SearchConfig, *, eos_id: int, levels: int | None):
    """``leaves_per_call`` selections per tree -> leaves [B, W]."""
    leaves = [
        select(
            tree,
            active,
            c_puct=cfg.c_puct,
            eos_id=eos_id,
            virtual_loss=cfg.virtual_loss,
            levels=levels,
            compiled=cfg.compile,
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
) -> None:
    """``dynamic.simulate`` in fixed shapes. ``graphs`` (``search.cuda_graph``): the
    selections and the leaves' expansion replayed from a CUDA graph, one per bucket of
    ``levels`` (extra levels are masked no-ops), with ``active`` copied into the buffer it
    reads."""
    L = tree.tokens.shape[2]
    if graphs is not None:
        bucket = min(-(-(L if levels is None else levels) // _LEVEL_BUCKET) * _LEVEL_BUCKET, L)
        buffer = graphs.buffer("active", active)

        def step():  # a function of fixed buffers: the tree, the evaluator's tables, ``buffer``
            stacked = _select_leaves(tree, buffer, cfg, eos_id=eos_id, levels=bucket)
            done = _expand(tree, stacked, buffer[:, None].expand_as(stacked), evaluator)
            return stacked, done

        stacked, done = graphs(bucket, step, counters=evaluator)
        _host_terminal_values(tree, done, evaluator)
    else:
        stacked = _select_leaves(tree, active, cfg, eos_id=eos_id, levels=levels)  # [B, W]
        evaluate_leaves(tree, stacked, active[:, None].expand_as(stacked), evaluator)
    tree.vloss.zero_()
    backup(tree, stacked, active[:, None].expand_as(stacked), positions=(0, L))
