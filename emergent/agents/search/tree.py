"""The search tree: the ``Tree`` record (B trees of N nodes, K children each), the records that
cross its boundary (``Expansion``, ``States``, ``LeafEvaluator``, ``SearchOutput``, ``Move``),
and the node operations over it: creating children, backing values up along paths, and the
statistics read at the root (its children, their Q, the evidence below them, sibling pairs).
Shapes as in ``emergent/agents/search/__init__.py``."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import NamedTuple, Protocol, Sequence

import numpy as np
import torch


@dataclass(frozen=True)
class Tree:
    tokens: torch.Tensor  # [B, N, L] int64  the state's tokens (prompt + path), right-padded
    length: torch.Tensor  # [B, N] int64     valid tokens of each state
    node_at: torch.Tensor  # [B, N, L] int64  the node that wrote each position (-1: the prompt's)
    children: torch.Tensor  # [B, N, K] int64  child node per edge, -1 until created
    child_token: torch.Tensor  # [B, N, K] int64  the token each edge writes
    prior: torch.Tensor  # [B, N, K] float  P(s, a)
    visits: torch.Tensor  # [B, N] float     N(s): simulations through this node
    value_sum: torch.Tensor  # [B, N] float     W(s): backed-up values
    value: torch.Tensor  # [B, N] float     evaluation at the node (network or verifier)
    net_value: torch.Tensor  # [B, N] float     the value network's own part of it (sibling pairs read it)
    verdict_value: torch.Tensor  # [B, N] float     the verifier's verdict in it, where ``verdict`` holds
    vloss: torch.Tensor  # [B, N] float     virtual visits of pending simulations
    expanded: torch.Tensor  # [B, N] bool      priors and value are set
    terminal: torch.Tensor  # [B, N] bool      EOS written or context full
    verdict: torch.Tensor  # [B, N] bool      ``value`` is a verifier's verdict (a terminal state's, or a rollout's)
    verdicts: torch.Tensor  # [B, N] float     simulations through this node that ended at a verdict
    verdict_sum: torch.Tensor  # [B, N] float     the sum of those verdicts
    num_nodes: torch.Tensor  # [B] int64
    root: torch.Tensor  # [B] int64        the current root (moves forward)
    # node N - 1 of every tree is scratch, never part of it: fixed-shape writes (``static``)
    # send there what a tree does not keep

    @property
    def batch(self) -> int:
        return self.tokens.shape[0]


class Expansion(NamedTuple):
    prior: torch.Tensor  # [M, K] renormalised over the top-k
    child_token: torch.Tensor  # [M, K]
    value: torch.Tensor  # [M] in [0, 1]
    verdict: torch.Tensor | None = None  # [M] bool: the value holds a verifier's verdict (a rollout's); None: none does
    # [M] each, where ``value`` mixes the value network's P(correct) with a rollout's verdict
    # (``leaf_value=mix``): the two parts; None: ``value`` is both
    net_value: torch.Tensor | None = None
    verdict_value: torch.Tensor | None = None


class States(NamedTuple):
    """M search states handed to a ``LeafEvaluator``; node 0 of a tree is its prompt."""

    rows: torch.Tensor  # [M] the tree (problem) of each state
    nodes: torch.Tensor  # [M] its node
    tokens: torch.Tensor  # [M, L] prompt + path, right-padded
    lengths: torch.Tensor  # [M]
    node_at: torch.Tensor  # [M, L] the node that wrote each position (-1: prompt); an
    # evaluator that keeps per-node keys and values reads its path here
    # [M] bool, or None: every state is to be evaluated. ``search.static`` hands over all the
    # selected leaves at once; only these are new (the others repeat one of them, or were
    # evaluated before): results for the rest are discarded, and a network that keeps
    # per-node keys and values must store only these states'
    write: torch.Tensor | None = None

    def subset(self, at: torch.Tensor) -> "States":
        """The states at ``at`` (indices, or a mask over the M)."""
        return States(*(t[at] for t in self[:5]), None if self.write is None else self.write[at])


class LeafEvaluator(Protocol):
    def begin(self, tree: "Tree") -> None: ...  # a new search over these trees starts
    def expand(self, states: States) -> Expansion: ...
    def terminal_value(self, states: States) -> torch.Tensor: ...

    # optional, default False: True when ``terminal_value`` is ``expand``'s value of the same
    # states (a learned value), so a ``static`` search values terminal leaves without the host
    terminal_from_network: bool


class SearchOutput(NamedTuple):
    tokens: torch.Tensor  # [B, L] the chosen trace: prompt + completion (+ EOS)
    length: torch.Tensor  # [B]
    prompt_length: torch.Tensor  # [B]
    visit_probs: torch.Tensor  # [B, M, V] visit distribution of each move (0 rows after the end)
    policy: torch.Tensor  # [B, M, V] the improved policy of each move (search.policy_target)
    moves: torch.Tensor  # [B] moves made
    searched: torch.Tensor  # [B, M] bool: simulations ran at this move (else it was confident)
    # [B, M] bool: searched, and some root child's subtree held a verifier's verdict (a
    # terminal state's or a rollout's): where the improved policy carries evidence
    informative: torch.Tensor | None = None
    # [B] each: over every searched move, the sibling pairs the network orders as the verdicts
    # do, and the pairs (``sibling_pairs``): the reward net's sibling-pair AUC is their ratio
    sibling_agree: torch.Tensor | None = None
    sibling_pairs: torch.Tensor | None = None
    prior_token: torch.Tensor | None = None  # [B, M] the token the policy's prior ranked first at each move


class Move(NamedTuple):
    visit_probs: torch.Tensor  # [B, K] visit distribution over the root's children
    policy: torch.Tensor  # [B, K] the improved policy over them
    searched: torch.Tensor  # [B] bool: simulations ran
    depth: int  # a bound on any tree's depth below its new root, known on the host
    informative: torch.Tensor  # [B] bool: searched, and a verdict lies below some root child
    sibling: tuple[torch.Tensor, torch.Tensor] | None = None  # ``sibling_pairs`` at searched moves
    prior_choice: torch.Tensor | None = None  # [B] the root child the prior (before noise) ranks first


# -- records ------------------------------------------------------------------------------


def init_tree(prompts: Sequence[np.ndarray], *, capacity: int, top_k: int, max_len: int, device) -> Tree:
    """Trees of ``capacity`` nodes (plus the scratch node), node 0 each prompt."""
    B = len(prompts)
    capacity += 1  # the scratch node
    tokens = torch.zeros(B, capacity, max_len, dtype=torch.long, device=device)
    length = torch.zeros(B, capacity, dtype=torch.long, device=device)
    node_at = torch.full((B, capacity, max_len), -1, dtype=torch.long, device=device)
    for b, p in enumerate(prompts):  # once per search, not per simulation
        tokens[b, 0, : len(p)] = torch.as_tensor(p, device=device)
        length[b, 0] = len(p)
    z = lambda *s, **kw: torch.zeros(*s, device=device, **kw)  # noqa: E731
    return Tree(
        tokens=tokens,
        length=length,
        node_at=node_at,
        children=torch.full((B, capacity, top_k), -1, dtype=torch.long, device=device),
        child_token=z(B, capacity, top_k, dtype=torch.long),
        prior=z(B, capacity, top_k),
        visits=z(B, capacity),
        value_sum=z(B, capacity),
        value=z(B, capacity),
        net_value=z(B, capacity),
        verdict_value=z(B, capacity),
        vloss=z(B, capacity),
        expanded=z(B, capacity, dtype=torch.bool),
        terminal=z(B, capacity, dtype=torch.bool),
        verdict=z(B, capacity, dtype=torch.bool),
        verdicts=z(B, capacity),
        verdict_sum=z(B, capacity),
        num_nodes=torch.ones(B, dtype=torch.long, device=device),
        root=z(B, dtype=torch.long),
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


def walk_tables(tree: Tree) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """What a selection walk reads and writes, as flat views: (visits with the virtual ones,
    value sums, values [B * N]; children, priors [B * N, K]; leaf [B * N] (a walk stops
    there: not expanded, or terminal); vloss [B * N] (written)), and base [B], each tree's
    node 0 in them. Both walks (``dynamic``, ``static``) take these."""
    B, N, K = tree.children.shape
    tables = (
        (tree.visits + tree.vloss).view(-1),
        tree.value_sum.view(-1),
        tree.value.view(-1),
        tree.children.view(B * N, K),
        tree.prior.view(B * N, K),
        (~tree.expanded | tree.terminal).view(-1),
        tree.vloss.view(-1),
    )
    return tables, _rows(B, tree.root.device) * N


def _xp(x):
    """The array module of ``x``: the selection walk runs on torch tensors, or on CPU on
    numpy views of the same memory (below)."""
    return torch if isinstance(x, torch.Tensor) else np


def _at_least(x, low):
    """max(x, low) elementwise, in x's dtype (numpy's ``clip`` method is a Python wrapper
    that costs more than the ufunc; torch has no ``maximum`` with a scalar)."""
    return x.clamp(min=low) if isinstance(x, torch.Tensor) else np.maximum(x, low)


def add_children(
    tree: Tree, nodes: torch.Tensor, actions: torch.Tensor, create: torch.Tensor, *, eos_id: int
) -> torch.Tensor:
    """Create the child of ``nodes`` [B] along ``actions`` [B] where ``create`` [B] holds.

    Returns the child index per tree [B] (the existing child, or the new node). Rows are
    read and written through flat [B * N] views; on CPU as numpy views of the same memory,
    as the selection walk (a call is some 20 small gathers and scatters)."""
    B, N, L = tree.tokens.shape
    K = tree.children.shape[2]
    tables = (
        tree.tokens.view(B * N, L),
        tree.node_at.view(B * N, L),
        tree.length.view(-1),
        tree.children.view(B * N, K),
        tree.child_token.view(B * N, K),
        tree.terminal.view(-1),
        tree.num_nodes,
    )
    if nodes.device.type == "cpu":
        return torch.from_numpy(_add_children(*(t.numpy() for t in (*tables, nodes, actions, create)), eos_id=eos_id))
    return _add_children(*tables, nodes, actions, create, eos_id=eos_id)


def _add_children(
    tokens, node_at, length, children, child_token, terminal, num_nodes, nodes, actions, create, *, eos_id: int
):
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
    if bool((new >= N - 1).any()):  # N - 1: the scratch node
        raise RuntimeError("search tree is full; raise its capacity")
    parent, made = b * N + nodes[b], b * N + new  # [c] flat indices
    tok = child_token[parent, a]
    n = length[parent]  # [c] the position the token takes
    c = xp.arange(len(b))
    for table, at_n in ((tokens, tok), (node_at, new)):  # the parent's row plus one position
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


def _paths(
    tree: Tree, leaves: torch.Tensor, active: torch.Tensor, positions: tuple[int, int] | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every node on each leaf's path from its tree's root, for leaves [B] or [B, W], as a
    fixed-shape scatter: (nodes [E], on [E] bool, leaf [E]) with E = W * B * (hi - lo), over
    context ``positions`` [lo, hi) (default: on CPU those some path spans, read from the tree;
    elsewhere all L), ``nodes``
    flat indices into [B * N], ``leaf`` which of the leaves (flattened leaf-major [W * B])
    the entry belongs to. Position t of leaf m's state names the node that wrote it
    (``node_at``; -1, the prompt's, is node 0); the path is the positions from the root's
    last one to the leaf's, and ``on`` marks them (and nothing of inactive trees).

    Fixed shape, no boolean indexing (on CPU a masked gather costs more than the scatter):
    callers add ``value * on``, and adding 0 leaves a float unchanged. Entries run leaf by
    leaf, so a scatter adds to each node in the order one call per leaf would."""
    B, N, L = tree.tokens.shape
    W = 1 if leaves.dim() == 1 else leaves.shape[1]
    base = _rows(B, leaves.device).repeat(W) * N  # [W * B]
    leaf = base + leaves.reshape(B, W).T.reshape(-1)  # [W * B] flat node index
    first = tree.length.view(-1).index_select(0, base + tree.root.repeat(W)) - 1
    end = tree.length.view(-1).index_select(0, leaf)
    lo, hi = (0, L) if positions is None else positions
    if (
        positions is None and leaves.device.type == "cpu"
    ):  # only the positions some path uses (a host read: free on CPU)
        lo, hi = int(first.min()), max(int(end.max()), int(first.min()) + 1)
    ids = tree.node_at.view(B * N, L).index_select(0, leaf)[:, lo:hi].clamp(min=0)  # [W * B, hi - lo]
    at = torch.arange(lo, hi, device=leaves.device)
    on = (at >= first[:, None]) & (at < end[:, None]) & active.reshape(B, W).T.reshape(-1, 1)
    which = torch.arange(W * B, device=leaves.device)[:, None].expand(-1, hi - lo)
    return (base[:, None] + ids).reshape(-1), on.reshape(-1), which.reshape(-1)


def backup(tree: Tree, leaves: torch.Tensor, active: torch.Tensor, *, positions: tuple[int, int] | None = None) -> None:
    """Add each leaf's value to every node on its path, for leaves [B] or [B, W] (a leaf
    selected twice counts twice), with one scatter over ``positions`` (``_paths``)."""
    nodes, on, which = _paths(tree, leaves, active, positions)
    B, N = tree.visits.shape
    flat = (_rows(B, leaves.device) * N)[:, None] + leaves.reshape(B, -1)  # [B, W]
    values = tree.value.view(-1).index_select(0, flat.T.reshape(-1))  # [W * B] leaf-major
    verdict = tree.verdict.view(-1).index_select(0, flat.T.reshape(-1))  # [W * B]
    verdict_values = tree.verdict_value.view(-1).index_select(0, flat.T.reshape(-1))  # [W * B]
    tree.visits.view(-1).index_add_(0, nodes, on.to(tree.visits.dtype))
    tree.value_sum.view(-1).index_add_(0, nodes, values.index_select(0, which) * on)
    judged = (verdict.index_select(0, which) & on).to(tree.verdicts.dtype)
    tree.verdicts.view(-1).index_add_(0, nodes, judged)
    tree.verdict_sum.view(-1).index_add_(0, nodes, verdict_values.index_select(0, which) * judged)


def root_children(tree: Tree) -> tuple[torch.Tensor, torch.Tensor]:
    """The root's child nodes [B, K] (clamped to 0 where absent) and their visits [B, K]
    (0 where absent)."""
    children = _at(tree.children, tree.root)
    rows = torch.arange(tree.batch, device=children.device)[:, None]
    safe = children.clamp(min=0)
    return safe, tree.visits[rows, safe] * (children >= 0)


def root_q(tree: Tree) -> tuple[torch.Tensor, torch.Tensor]:
    """Q of each root child [B, K] (0 where unvisited) and its visits [B, K]."""
    children, n = root_children(tree)
    rows = torch.arange(tree.batch, device=children.device)[:, None]
    return tree.value_sum[rows, children] / n.clamp(min=1), n


def root_evidence(tree: Tree) -> torch.Tensor:
    """[B] bool: a verifier's verdict was backed up through some child of the root."""
    children = _at(tree.children, tree.root)
    rows = torch.arange(tree.batch, device=children.device)[:, None]
    return (tree.verdicts[rows, children.clamp(min=0)] * (children >= 0)).sum(1) > 0


def sibling_pairs(tree: Tree) -> tuple[torch.Tensor, torch.Tensor]:
    """Does the network order the root's children as the verdicts below them do? Over the
    pairs of non-terminal root children with verdicts below both and different mean verdicts:
    (agreeing pairs [B] (a tie in the network's values counts a half), pairs [B]). A
    child's network value is its evaluation (``Tree.value``; with ``leaf_value=net`` the
    reward net's P(correct); with ``leaf_value=mix`` the net's own part, ``Tree.net_value``;
    with ``rollout`` a verdict itself: the count says nothing there)."""
    children = _at(tree.children, tree.root)  # [B, K]
    rows = torch.arange(tree.batch, device=children.device)[:, None]
    safe = children.clamp(min=0)
    n = tree.verdicts[rows, safe]
    ok = (children >= 0) & (n > 0) & ~tree.terminal[rows, safe]
    mean = tree.verdict_sum[rows, safe] / n.clamp(min=1)  # [B, K]
    net = tree.net_value[rows, safe]
    pair = ok[:, :, None] & ok[:, None, :] & (mean[:, :, None] > mean[:, None, :])  # [B, K, K]: i better than j
    d = net[:, :, None] - net[:, None, :]
    agree = torch.where(d > 0, 1.0, torch.where(d == 0, 0.5, 0.0)) * pair
    return agree.sum((1, 2)), pair.sum((1, 2)).to(agree.dtype)
