"""Batched PUCT Monte-Carlo tree search over next tokens, for many problems at once.

mctx-style: a typed, frozen record (``Tree``) and small functions over it, in three
layers: ``simulate`` is one simulation step over a batch of trees; ``search_move`` runs a
move's simulations and reads the improved policy at the root; ``search`` is the decode
loop around it. The improved policy (visit counts, or Gumbel MuZero's completed Q) is
chosen once, as a function (``IMPROVED_POLICIES``). The record's fields are fixed; its
tensors are updated in place (copying them per simulation would cost more than the
search). Random draws take an explicit ``torch.Generator``. Tuning arguments are
keyword-only fields of ``SearchConfig``. The network evaluator and the text boundary live
in ``policy_value.py``.

Shapes: B problems (one tree each), N node capacity per tree, K children per node (the
policy's top-k tokens), L the context length, V the vocabulary, M states evaluated in
one call.

One move of search:
  1. ``simulate`` ``num_simulations`` times. Each call selects ``leaves_per_call`` leaves
     per tree by PUCT; a virtual loss on each selected path pushes later selections
     elsewhere, so one network call evaluates B x leaves_per_call states.
  2. New non-terminal leaves are expanded by the ``LeafEvaluator``: priors over the policy's
     top-k next tokens, and a value from the reward-and-objective network. Terminal
     leaves (EOS or a full context) are valued by ``terminal_value``: the verifier, or
     the learned network.
  3. The value is backed up along each path.
  4. The move's visit distribution is read at the root, a token chosen, and the root
     moves to that child. The child's subtree, with its statistics, is reused.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, NamedTuple, Protocol, Sequence

import numpy as np
import torch

TERMINAL_VALUES = ("verifier", "learned")
POLICY_TARGETS = ("visits", "completed_q")


@dataclass(kw_only=True)
class SearchConfig:
    num_simulations: int = 32       # simulations per move (per token)
    leaves_per_call: int = 4        # leaves per tree evaluated together (virtual loss)
    top_k: int = 8                  # children per node: the policy's top-k tokens
    c_puct: float = 1.5
    dirichlet_alpha: float = 0.3
    dirichlet_fraction: float = 0.0  # weight of root noise; 0 for evaluation, ~0.25 for self-play
    temperature: float = 0.0        # move choice from visits: 0 = most visited
    virtual_loss: float = 1.0
    terminal_value: str = "verifier"  # verifier | learned
    # a move whose top prior exceeds this is played from the prior, without simulations:
    # most tokens of a trace (digits of a result, separators) are near-certain, and search
    # spends its budget on the few real decisions. 1.0: search every move.
    confident_prior: float = 1.0
    # the improved policy each move reports (``SearchOutput.policy``): the visit distribution
    # (AlphaZero), or softmax(log prior + sigma(completed Q)) (Gumbel MuZero, Danihelka et al.
    # 2022). With a few dozen simulations visits mostly follow exploration and root noise, and
    # are flatter than the prior where the values do not differ; the completed-Q policy equals
    # the prior there and moves only where the values say so. sigma(q) = (maxvisit_init +
    # max_a N(a)) * value_scale * q, as mctx.
    policy_target: str = "visits"
    value_scale: float = 0.1
    maxvisit_init: float = 50.0
    # leaves evaluated from each node's kept keys and values (one token per leaf through
    # each network; memory grows with the tree, see agents/tree_kv.py); false recomputes
    # every leaf's whole prefix: the reference, equal up to float rounding (tests/test_search.py)
    kv_cache: bool = True

    def validate(self) -> None:
        if self.terminal_value not in TERMINAL_VALUES:
            raise ValueError(f"search.terminal_value={self.terminal_value!r}; choose one of {list(TERMINAL_VALUES)}")
        if self.policy_target not in POLICY_TARGETS:
            raise ValueError(f"search.policy_target={self.policy_target!r}; choose one of {list(POLICY_TARGETS)}")
        if self.num_simulations < 0 or self.leaves_per_call < 1 or self.top_k < 1:
            raise ValueError("search.num_simulations must be >= 0, leaves_per_call and top_k >= 1")
        if not 0.0 <= self.dirichlet_fraction <= 1.0:
            raise ValueError("search.dirichlet_fraction must lie in [0, 1]")
        if self.value_scale < 0 or self.maxvisit_init < 0:
            raise ValueError("search.value_scale and search.maxvisit_init must be >= 0")
        if not 0.0 <= self.confident_prior <= 1.0:
            raise ValueError("search.confident_prior must lie in [0, 1]")


@dataclass(frozen=True)
class Tree:
    tokens: torch.Tensor       # [B, N, L] int64  the state's tokens (prompt + path), right-padded
    length: torch.Tensor       # [B, N] int64     valid tokens of each state
    node_at: torch.Tensor      # [B, N, L] int64  the node that wrote each position (-1: the prompt's)
    children: torch.Tensor     # [B, N, K] int64  child node per edge, -1 until created
    child_token: torch.Tensor  # [B, N, K] int64  the token each edge writes
    prior: torch.Tensor        # [B, N, K] float  P(s, a)
    visits: torch.Tensor       # [B, N] float     N(s): simulations through this node
    value_sum: torch.Tensor    # [B, N] float     W(s): backed-up values
    value: torch.Tensor        # [B, N] float     evaluation at the node (network or verifier)
    vloss: torch.Tensor        # [B, N] float     virtual visits of pending simulations
    expanded: torch.Tensor     # [B, N] bool      priors and value are set
    terminal: torch.Tensor     # [B, N] bool      EOS written or context full
    num_nodes: torch.Tensor    # [B] int64
    root: torch.Tensor         # [B] int64        the current root (moves forward)

    @property
    def batch(self) -> int:
        return self.tokens.shape[0]


class Expansion(NamedTuple):
    prior: torch.Tensor        # [M, K] renormalised over the top-k
    child_token: torch.Tensor  # [M, K]
    value: torch.Tensor        # [M] in [0, 1]


class States(NamedTuple):
    """M search states handed to a ``LeafEvaluator``; node 0 of a tree is its prompt."""
    rows: torch.Tensor         # [M] the tree (problem) of each state
    nodes: torch.Tensor        # [M] its node
    tokens: torch.Tensor       # [M, L] prompt + path, right-padded
    lengths: torch.Tensor      # [M]
    node_at: torch.Tensor      # [M, L] the node that wrote each position (-1: prompt); an
                               # evaluator that keeps per-node keys and values reads its path here


class LeafEvaluator(Protocol):
    def begin(self, tree: "Tree") -> None: ...  # a new search over these trees starts
    def expand(self, states: States) -> Expansion: ...
    def terminal_value(self, states: States) -> torch.Tensor: ...


class SearchOutput(NamedTuple):
    tokens: torch.Tensor        # [B, L] the chosen trace: prompt + completion (+ EOS)
    length: torch.Tensor        # [B]
    prompt_length: torch.Tensor  # [B]
    visit_probs: torch.Tensor   # [B, M, V] visit distribution of each move (0 rows after the end)
    policy: torch.Tensor        # [B, M, V] the improved policy of each move (search.policy_target)
    moves: torch.Tensor         # [B] moves made
    searched: torch.Tensor      # [B, M] bool: simulations ran at this move (else it was confident)


class Move(NamedTuple):
    visit_probs: torch.Tensor   # [B, K] visit distribution over the root's children
    policy: torch.Tensor        # [B, K] the improved policy over them
    searched: torch.Tensor      # [B] bool: simulations ran


# -- records ------------------------------------------------------------------------------

def init_tree(prompts: Sequence[np.ndarray], *, capacity: int, top_k: int, max_len: int, device) -> Tree:
    B = len(prompts)
    tokens = torch.zeros(B, capacity, max_len, dtype=torch.long, device=device)
    length = torch.zeros(B, capacity, dtype=torch.long, device=device)
    node_at = torch.full((B, capacity, max_len), -1, dtype=torch.long, device=device)
    for b, p in enumerate(prompts):  # once per search, not per simulation
        tokens[b, 0, : len(p)] = torch.as_tensor(p, device=device)
        length[b, 0] = len(p)
    z = lambda *s, **kw: torch.zeros(*s, device=device, **kw)  # noqa: E731
    return Tree(
        tokens=tokens, length=length, node_at=node_at,
        children=torch.full((B, capacity, top_k), -1, dtype=torch.long, device=device),
        child_token=z(B, capacity, top_k, dtype=torch.long), prior=z(B, capacity, top_k),
        visits=z(B, capacity), value_sum=z(B, capacity), value=z(B, capacity), vloss=z(B, capacity),
        expanded=z(B, capacity, dtype=torch.bool), terminal=z(B, capacity, dtype=torch.bool),
        num_nodes=torch.ones(B, dtype=torch.long, device=device), root=z(B, dtype=torch.long),
    )


@functools.lru_cache(maxsize=8)
def _rows(batch: int, device: torch.device) -> torch.Tensor:
    """0..B-1 [B]: the tree index that every per-tree gather pairs with a node. Made once
    per batch size and device: selection gathers a few times per tree level."""
    return torch.arange(batch, device=device)


def _at(x: torch.Tensor, nodes: torch.Tensor) -> torch.Tensor:
    """x [B, N, ...] at one node per tree, nodes [B] -> [B, ...]."""
    return x[_rows(x.shape[0], x.device), nodes]


# -- selection ------------------------------------------------------------------------------

def _xp(x):
    """The array module of ``x``: the selection walk runs on torch tensors, or on CPU on
    numpy views of the same memory (below)."""
    return torch if isinstance(x, torch.Tensor) else np


def _at_least(x, low):
    """max(x, low) elementwise, in x's dtype (numpy's ``clip`` method is a Python wrapper
    that costs more than the ufunc; torch has no ``maximum`` with a scalar)."""
    return x.clamp(min=low) if isinstance(x, torch.Tensor) else np.maximum(x, low)


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


def add_children(tree: Tree, nodes: torch.Tensor, actions: torch.Tensor, create: torch.Tensor, *,
                 eos_id: int) -> torch.Tensor:
    """Create the child of ``nodes`` [B] along ``actions`` [B] where ``create`` [B] holds.

    Returns the child index per tree [B] (the existing child, or the new node). Rows are
    read and written through flat [B * N] views; on CPU as numpy views of the same memory,
    as the selection walk (a call is some 20 small gathers and scatters)."""
    B, N, L = tree.tokens.shape
    K = tree.children.shape[2]
    tables = (tree.tokens.view(B * N, L), tree.node_at.view(B * N, L), tree.length.view(-1),
              tree.children.view(B * N, K), tree.child_token.view(B * N, K), tree.terminal.view(-1), tree.num_nodes)
    if nodes.device.type == "cpu":
        return torch.from_numpy(_add_children(*(t.numpy() for t in (*tables, nodes, actions, create)), eos_id=eos_id))
    return _add_children(*tables, nodes, actions, create, eos_id=eos_id)


def _add_children(tokens, node_at, length, children, child_token, terminal, num_nodes, nodes, actions, create, *,
                  eos_id: int):
    """``add_children`` over flat tables (torch tensors or numpy arrays): tokens and node_at
    [B * N, L], length [B * N], children and child_token [B * N, K], terminal [B * N],
    num_nodes [B]; returns child [B]."""
    xp = _xp(nodes)
    N, L = len(length) // len(nodes), tokens.shape[1]
    child = children[nodes + xp.arange(len(nodes)) * N, actions]
    b = create.nonzero()[0] if xp is np else create.nonzero().squeeze(1)  # [c] trees that add a node
    if len(b) == 0:
        return child
    a, new = actions[b], num_nodes[b]
    if bool((new >= N).any()):
        raise RuntimeError("search tree is full; raise its capacity")
    parent, made = b * N + nodes[b], b * N + new                      # [c] flat indices
    tok = child_token[parent, a]
    n = length[parent]                                                # [c] the position the token takes
    c = xp.arange(len(b))
    for table, at_n in ((tokens, tok), (node_at, new)):               # the parent's row plus one position
        rows = table[parent]
        rows[c, n] = at_n
        table[made] = rows
    length[made] = n + 1
    children[parent, a] = new
    terminal[made] = (tok == eos_id) | (n + 1 >= L)
    num_nodes[b] += 1
    child = child.copy() if xp is np else child.clone()
    child[b] = new
    return child


def select(tree: Tree, active: torch.Tensor, *, c_puct: float, eos_id: int, virtual_loss: float = 0.0) -> torch.Tensor:
    """Walk from each root by PUCT to a leaf; create the node if the edge is new.

    Returns leaves [B] (the root itself for inactive trees). A leaf is a node not yet
    expanded (new, or created by an earlier selection of this batch) or a terminal node.
    A walk that takes an edge not taken before ends there; the new nodes of all trees are
    created together once every walk has ended. ``virtual_loss``: each node on an active
    walk's path (root and leaf included) gets that many virtual visits (``Tree.vloss``),
    which later walks of the batch see; this walk reads the counts as they were before it.
    """
    B, N, K = tree.children.shape
    base = _rows(B, active.device) * N                     # [B] flat index of each tree's node 0
    tables = ((tree.visits + tree.vloss).view(-1), tree.value_sum.view(-1), tree.value.view(-1),
              tree.children.view(B * N, K), tree.prior.view(B * N, K), (~tree.expanded | tree.terminal).view(-1),
              tree.vloss.view(-1))
    start = base + tree.root
    if active.device.type == "cpu":
        # a level is some 30 ops on [B, K] rows: through torch's dispatcher ~3.5 us each, as
        # numpy ops on views of the same memory half that (the walk is most of a CPU search)
        arrays = [t.numpy() for t in (*tables, base, start, active)]
        amount = arrays[6].dtype.type(virtual_loss)  # vloss's own float type: no float64 detour
        node, new, action = (torch.from_numpy(x) for x in _walk(*arrays, c_puct=c_puct, virtual_loss=amount))
    else:
        node, new, action = _walk(*tables, base, start, active, c_puct=c_puct, virtual_loss=virtual_loss)
    if not bool(new.any()):
        return node
    leaf = torch.where(new, add_children(tree, node, action, new, eos_id=eos_id), node)
    if virtual_loss:
        tree.vloss.view(-1)[base + leaf] += new.to(tree.vloss.dtype) * virtual_loss  # the new nodes: their paths' ends
    return leaf


def _walk(visits, value_sum, value, children, prior, leaf, vloss, base, at, active, *, c_puct: float,
          virtual_loss: float):
    """The selection walk over flat tables (torch tensors, or numpy arrays): visits (virtual
    included), value sums, values [B * N]; children (-1: none yet), priors [B * N, K]; leaf
    [B * N] (a walk stops there); vloss [B * N] (written: ``virtual_loss`` on each node the
    walk enters); base [B] (each tree's node 0), at [B] the roots, active [B]. One level per
    loop over all trees: rows [B, K] of each table, read with ``take`` (numpy's fastest
    gather; flat indices, each tree's its own). Returns (node [B], new [B]: the walk ended
    on an edge without a node, action [B]: that edge)."""
    xp = _xp(at)
    rows_of = (lambda t, i: t.take(i, axis=0)) if xp is np else (lambda t, i: t.index_select(0, i))
    K = children.shape[1]
    row_start = xp.arange(len(at)) * K                                    # [B] flat index of each row of [B, K]
    if virtual_loss:
        vloss[at] += virtual_loss * active
    stop = ~active | leaf.take(at)
    new = stop & False
    action = at * 0
    entered = []                                                          # per level: the node entered, or -1
    while not bool(stop.all()):
        kids = rows_of(children, at)                                      # [B, K] node ids, -1: none yet
        flat = base[:, None] + _at_least(kids, 0)                         # [B, K]
        n = visits.take(flat) * (kids >= 0)
        a = puct_scores(n, value_sum.take(flat), rows_of(prior, at), value.take(at), c_puct).argmax(1)  # [B]
        child = kids.take(row_start + a)
        fresh = (child < 0) & ~stop
        new |= fresh
        action = xp.where(fresh, a, action)
        done = stop | fresh
        at = xp.where(done, at, base + child)
        entered.append(xp.where(done, -1, at))
        stop = done | leaf.take(at)
    if virtual_loss and entered:  # one write for the whole walk: a path enters each node once
        nodes = xp.concatenate(entered)
        vloss[nodes[nodes >= 0]] += virtual_loss
    return at - base, new, action


def _paths(tree: Tree, leaves: torch.Tensor, active: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every node on each leaf's path from its tree's root, for leaves [B] or [B, W], as a
    fixed-shape scatter: (nodes [E], on [E] bool, leaf [E]) with E = W * B * L (on CPU, L
    cut to the positions some path spans), ``nodes``
    flat indices into [B * N], ``leaf`` which of the leaves (flattened leaf-major [W * B])
    the entry belongs to. Position t of leaf m's state names the node that wrote it
    (``node_at``; -1, the prompt's, is node 0); the path is the positions from the root's
    last one to the leaf's, and ``on`` marks them (and nothing of inactive trees).

    Fixed shape, no boolean indexing (on CPU a masked gather costs more than the scatter):
    callers add ``value * on``, and adding 0 leaves a float unchanged. Entries run leaf by
    leaf, so a scatter adds to each node in the order one call per leaf would."""
    B, N, L = tree.tokens.shape
    W = 1 if leaves.dim() == 1 else leaves.shape[1]
    base = _rows(B, leaves.device).repeat(W) * N                              # [W * B]
    leaf = base + leaves.reshape(B, W).T.reshape(-1)                          # [W * B] flat node index
    first = tree.length.view(-1).index_select(0, base + tree.root.repeat(W)) - 1
    end = tree.length.view(-1).index_select(0, leaf)
    lo, hi = 0, L
    if leaves.device.type == "cpu":  # only the positions some path uses (a host read: free on CPU)
        lo, hi = int(first.min()), max(int(end.max()), int(first.min()) + 1)
    ids = tree.node_at.view(B * N, L).index_select(0, leaf)[:, lo:hi].clamp(min=0)  # [W * B, hi - lo]
    at = torch.arange(lo, hi, device=leaves.device)
    on = (at >= first[:, None]) & (at < end[:, None]) & active.reshape(B, W).T.reshape(-1, 1)
    which = torch.arange(W * B, device=leaves.device)[:, None].expand(-1, hi - lo)
    return (base[:, None] + ids).reshape(-1), on.reshape(-1), which.reshape(-1)


def backup(tree: Tree, leaves: torch.Tensor, active: torch.Tensor) -> None:
    """Add each leaf's value to every node on its path, for leaves [B] or [B, W] (a leaf
    selected twice counts twice), with one scatter."""
    nodes, on, which = _paths(tree, leaves, active)
    B, N = tree.visits.shape
    flat = (_rows(B, leaves.device) * N)[:, None] + leaves.reshape(B, -1)  # [B, W]
    values = tree.value.view(-1).index_select(0, flat.T.reshape(-1))       # [W * B] leaf-major
    tree.visits.view(-1).index_add_(0, nodes, on.to(tree.visits.dtype))
    tree.value_sum.view(-1).index_add_(0, nodes, values.index_select(0, which) * on)


# -- evaluation --------------------------------------------------------------------------------

def evaluate_leaves(tree: Tree, leaves: torch.Tensor, active: torch.Tensor, evaluator: LeafEvaluator) -> None:
    """Expand new non-terminal leaves and value new terminal ones, each state once (in
    (tree, node) order)."""
    B, N, L = tree.tokens.shape
    flat = torch.unique((_rows(B, leaves.device)[:, None] * N + leaves)[active])  # [m] sorted, distinct
    flat = flat[~tree.expanded.view(-1)[flat]]
    if len(flat) == 0:
        return
    term = tree.terminal.view(-1)[flat]

    def states(at: torch.Tensor) -> States:
        return States(at // N, at % N, tree.tokens.view(B * N, L).index_select(0, at), tree.length.view(-1)[at],
                      tree.node_at.view(B * N, L).index_select(0, at))

    if bool((~term).any()):
        at = flat[~term]
        out = evaluator.expand(states(at))
        tree.prior.view(B * N, -1)[at] = out.prior.to(tree.prior.dtype)
        tree.child_token.view(B * N, -1)[at] = out.child_token
        tree.value.view(-1)[at] = out.value.to(tree.value.dtype)
    if bool(term.any()):
        at = flat[term]
        tree.value.view(-1)[at] = evaluator.terminal_value(states(at)).to(tree.value.dtype)
    tree.expanded.view(-1)[flat] = True


def simulate(tree: Tree, active: torch.Tensor, evaluator: LeafEvaluator, cfg: SearchConfig, *, eos_id: int) -> None:
    """One batch of ``leaves_per_call`` simulations per active tree."""
    leaves = [select(tree, active, c_puct=cfg.c_puct, eos_id=eos_id, virtual_loss=cfg.virtual_loss)
              for _ in range(cfg.leaves_per_call)]
    stacked = torch.stack(leaves, 1)  # [B, W]
    evaluate_leaves(tree, stacked, active[:, None].expand_as(stacked), evaluator)
    tree.vloss.zero_()
    backup(tree, stacked, active[:, None].expand_as(stacked))


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


def root_children(tree: Tree) -> tuple[torch.Tensor, torch.Tensor]:
    """The root's child nodes [B, K] (clamped to 0 where absent) and their visits [B, K]
    (0 where absent)."""
    children = _at(tree.children, tree.root)
    rows = torch.arange(tree.batch, device=children.device)[:, None]
    safe = children.clamp(min=0)
    return safe, tree.visits[rows, safe] * (children >= 0)


def root_visit_probs(tree: Tree, prior: torch.Tensor | None = None, **_) -> torch.Tensor:
    """Visit distribution over the root's children [B, K]; the prior where nothing was
    visited (the root's current prior; ``prior`` is accepted for a common signature)."""
    _, n = root_children(tree)
    total = n.sum(1, keepdim=True)
    return torch.where(total > 0, n / total.clamp(min=1e-9), _at(tree.prior, tree.root))


def completed_q_policy(tree: Tree, prior: torch.Tensor, *, value_scale: float, maxvisit_init: float,
                       visit_probs: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(log prior + sigma(completed Q)) over the root's children [B, K] (mctx's
    ``qtransform_completed_by_mix_value`` without rescaling: values are already P(correct)
    in [0, 1]). An unvisited child's Q is the mixed value: the root's own evaluation
    averaged with the prior-weighted Q of the visited children. ``prior`` is the root's
    prior before any Dirichlet noise."""
    children, n = root_children(tree)                                  # [B, K], [B, K]
    rows = torch.arange(tree.batch, device=children.device)[:, None]
    q = tree.value_sum[rows, children] / n.clamp(min=1)
    seen = n > 0
    p = prior.clamp(min=1e-30)
    p_seen = (p * seen).sum(1, keepdim=True)
    weighted_q = (p * q * seen).sum(1, keepdim=True) / p_seen.clamp(min=1e-30)
    n_sum = n.sum(1, keepdim=True)
    mixed = (_at(tree.value, tree.root)[:, None] + n_sum * weighted_q) / (n_sum + 1)
    completed = torch.where(seen, q, mixed)
    sigma = (maxvisit_init + n.max(1, keepdim=True).values) * value_scale * completed
    return torch.softmax(p.log() + sigma, -1)


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


def advance(tree: Tree, actions: torch.Tensor, active: torch.Tensor, evaluator: LeafEvaluator, *, eos_id: int) -> None:
    """Move each active root to the chosen child, creating and evaluating it if new."""
    arange = torch.arange(tree.batch, device=actions.device)
    child = tree.children[arange, tree.root, actions]
    child = add_children(tree, tree.root, actions, active & (child < 0), eos_id=eos_id)
    tree.root.copy_(torch.where(active, child, tree.root))
    evaluate_leaves(tree, tree.root[:, None], active[:, None], evaluator)


def search_move(tree: Tree, active: torch.Tensor, evaluator: LeafEvaluator, cfg: SearchConfig, *,
                improved: Callable[..., torch.Tensor], generator: torch.Generator | None, eos_id: int) -> Move:
    """One move of every active tree: simulate (unless the root's top prior exceeds
    ``confident_prior``), read the visit distribution and the improved policy at the root,
    choose a child and move the root there."""
    unsure = active & (_at(tree.prior, tree.root).max(1).values <= cfg.confident_prior)
    prior = _at(tree.prior, tree.root).clone()  # before root noise: the improved policy's base
    add_root_noise(tree, unsure, cfg, generator)
    calls = -(-cfg.num_simulations // cfg.leaves_per_call)  # ceil: network calls per move
    for _ in range(calls if bool(unsure.any()) else 0):
        simulate(tree, unsure, evaluator, cfg, eos_id=eos_id)
    visit_probs = root_visit_probs(tree)                                     # [B, K]
    policy = improved(tree, prior, visit_probs=visit_probs, value_scale=cfg.value_scale,
                      maxvisit_init=cfg.maxvisit_init)                       # [B, K]
    advance(tree, choose(visit_probs, cfg.temperature, generator), active, evaluator, eos_id=eos_id)
    return Move(visit_probs, policy, unsure & (cfg.num_simulations > 0))


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
    evaluate_leaves(tree, tree.root[:, None], torch.ones(B, 1, dtype=torch.bool, device=device), evaluator)  # the roots
    improved = IMPROVED_POLICIES[cfg.policy_target]
    visit_probs = torch.zeros(B, max_moves, vocab_size, device=device)
    policy = visit_probs if cfg.policy_target == "visits" else torch.zeros(B, max_moves, vocab_size, device=device)
    searched_at = torch.zeros(B, max_moves, dtype=torch.bool, device=device)
    moves = torch.zeros(B, dtype=torch.long, device=device)
    arange = torch.arange(B, device=device)
    for m in range(max_moves):
        active = ~_at(tree.terminal, tree.root)
        if not bool(active.any()):
            break
        tokens = _at(tree.child_token, tree.root)  # [B, K] before the root moves on
        move = search_move(tree, active, evaluator, cfg, improved=improved, generator=generator, eos_id=eos_id)
        searched_at[:, m] = move.searched
        # one table serves both when the improved policy is the visits
        tables = [(visit_probs, move.visit_probs)] + ([(policy, move.policy)] if policy is not visit_probs else [])
        for out, dist in tables:
            full = torch.zeros(B, vocab_size, device=device).scatter_add_(1, tokens, dist)
            out[:, m] = torch.where(active[:, None], full, 0.0)
        moves += active.long()
    final, made = tree.root, int(moves.max()) if B else 0
    return SearchOutput(
        tokens=tree.tokens[arange, final], length=tree.length[arange, final], prompt_length=prompt_len,
        visit_probs=visit_probs[:, :made], policy=policy[:, :made], moves=moves, searched=searched_at[:, :made],
    )
