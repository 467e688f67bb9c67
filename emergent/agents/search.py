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

A simulation call runs one of two ways, to the same trees. By default it reads the host
when that saves work (walks stop when all have, only new leaves are evaluated, the walk
and node creation run on numpy views on CPU): cheapest on a CPU. ``search.static`` runs
it in fixed shapes with nothing read back inside a move, so a GPU's launch queue never
drains; ``search.cuda_graph`` then replays each call from a CUDA graph.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, NamedTuple, Protocol, Sequence

import numpy as np
import torch

from . import gumbel
from .graph_replay import GraphReplay

TERMINAL_VALUES = ("verifier", "learned")
POLICY_TARGETS = ("visits", "completed_q")
ROOTS = ("puct", "gumbel")
LEAF_VALUES = ("net", "rollout", "mix")


@dataclass(kw_only=True)
class SearchConfig:
    num_simulations: int = 32  # simulations per move (per token)
    leaves_per_call: int = 4  # leaves per tree evaluated together (virtual loss)
    top_k: int = 8  # children per node: the policy's top-k tokens
    c_puct: float = 1.5
    dirichlet_alpha: float = 0.3
    dirichlet_fraction: float = 0.0  # weight of root noise; 0 for evaluation, ~0.25 for self-play
    temperature: float = 0.0  # move choice from visits: 0 = most visited
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
    # how the root spends a move's simulations and picks the move: PUCT from the root (with
    # Dirichlet noise for exploration, the move by ``temperature`` over visits), or Gumbel
    # MuZero's root (``agents/gumbel.py``): Gumbel-top-k over ``max_considered`` actions,
    # sequential halving, the survivor played; its improved policy is the completed-Q one
    # with min-max rescaled values, and ``gumbel_scale`` (0: none) is its only exploration.
    # Below the root both select by PUCT.
    root: str = "puct"
    max_considered: int = 16
    gumbel_scale: float = 1.0
    # the Gumbel root's completed Q min-max rescaled over the root's children before sigma
    # (mctx's default, for values of any scale). Ours are already P(correct) in [0, 1], and
    # rescaling stretches a 0.01 difference between two children's noisy values into the
    # full range, a target ~e^5 times sharper: from the countdown d64 warm start (seed 0,
    # 16 simulations, net leaves) the policy fell 0.21 -> 0.075 in 40 iterations with it,
    # and rose to 0.255 in 156 without it
    rescale_values: bool = False
    # a new non-terminal leaf's value: the reward net's P(correct) (net), the verifier's
    # verdict on the policy's greedy completion of it (rollout: on the verifier's scale, and
    # a verdict below the move, at the cost of a completion per leaf), or
    # (1 - rollout_weight) * net + rollout_weight * rollout (mix)
    leaf_value: str = "net"
    rollout_weight: float = 0.5
    # alphazero: measure the improvement win rate on each batch (agents/improvement.py): a
    # greedy completion of both choices at each informative move where they differ (its
    # compute is a measurement's, outside the ledger, like evaluation's)
    diagnostics: bool = True
    # alphazero: up to this many states the verifier judged in the tree per iteration
    # (terminal states and rollouts, off the path played too), each completed trace with its
    # verdict, join the reward net's training data: the siblings the search compares
    tree_traces: int = 256
    # leaves evaluated from each node's kept keys and values (one token per leaf through
    # each network; memory grows with the tree, see agents/tree_kv.py); false recomputes
    # every leaf's whole prefix: the reference, equal up to float rounding (tests/test_search.py)
    kv_cache: bool = True
    # every simulation call as fixed-shape tensor ops with no host sync (the design for a
    # GPU, where each sync stalls the launch queue): the walk runs a host-known bound of
    # levels with masks instead of stopping when every walk has, node creation writes every
    # tree (a scratch node takes the writes of trees that add none), and one network call
    # evaluates all B x leaves_per_call selected leaves (duplicates and ones already
    # evaluated included, their results discarded), each over its whole path's kept keys.
    # The only host work left inside a move is the verifier on new terminal leaves (none
    # with terminal_value=learned). The same trees as the default, up to float rounding
    # (tests/test_search.py); on CPU it is slower (no early exits, more leaf work).
    static: bool = False
    # static simulation calls replayed from CUDA graphs (agents/graph_replay.py), one per
    # bucket of walk levels: one launch instead of thousands of kernels. Needs static; off
    # CUDA the same code runs eagerly
    cuda_graph: bool = False
    # each walk level of the static path as one torch.compile'd function (Triton kernels on a
    # GPU, C++ on a CPU, where the default path does not use it). Needs static
    compile: bool = False

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
        if self.leaf_value not in LEAF_VALUES:
            raise ValueError(f"search.leaf_value={self.leaf_value!r}; choose one of {list(LEAF_VALUES)}")
        if not 0.0 <= self.rollout_weight <= 1.0:
            raise ValueError("search.rollout_weight must lie in [0, 1]")
        if self.leaf_value != "net" and self.static:
            raise ValueError(
                "search.leaf_value=rollout/mix runs a completion per leaf on the host: search.static=false"
            )
        if self.root not in ROOTS:
            raise ValueError(f"search.root={self.root!r}; choose one of {list(ROOTS)}")
        if self.tree_traces < 0:
            raise ValueError("search.tree_traces must be >= 0")
        if self.max_considered < 1 or self.gumbel_scale < 0:
            raise ValueError("search.max_considered must be >= 1 and search.gumbel_scale >= 0")
        if self.root == "gumbel" and (self.static or self.dirichlet_fraction > 0):
            raise ValueError(
                "search.root=gumbel runs on the default path with no Dirichlet noise: set "
                "search.static=false and search.dirichlet_fraction=0 (the Gumbel draw explores)"
            )
        if (self.cuda_graph or self.compile) and not self.static:
            raise ValueError("search.cuda_graph=true and search.compile=true need search.static=true (fixed shapes)")


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


def add_children(
    tree: Tree, nodes: torch.Tensor, actions: torch.Tensor, create: torch.Tensor, *, eos_id: int, static: bool = False
) -> torch.Tensor:
    """Create the child of ``nodes`` [B] along ``actions`` [B] where ``create`` [B] holds.

    Returns the child index per tree [B] (the existing child, or the new node). Rows are
    read and written through flat [B * N] views; on CPU as numpy views of the same memory,
    as the selection walk (a call is some 20 small gathers and scatters). ``static``: in
    torch, fixed shapes, no host sync."""
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
    if static:
        return _add_children_static(*tables, nodes, actions, create, eos_id=eos_id)
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


def _add_children_static(
    tokens, node_at, length, children, child_token, terminal, num_nodes, nodes, actions, create, *, eos_id: int
) -> torch.Tensor:
    """``_add_children`` in fixed shapes (torch, no host sync): every tree writes one node,
    its next free one where ``create`` holds and the scratch node (N - 1) where not. The
    capacity ``search`` allocates cannot run out, and here nothing can check it without a
    sync: ``search`` checks once, at its end."""
    B = len(nodes)
    N, L = len(length) // B, tokens.shape[1]
    rows = torch.arange(B, device=nodes.device)
    parent = rows * N + nodes  # [B] flat indices
    new = num_nodes.clone()  # [B] each tree's next free node
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
    num_nodes += create
    return child


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


def _paths(
    tree: Tree, leaves: torch.Tensor, active: torch.Tensor, *, static: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every node on each leaf's path from its tree's root, for leaves [B] or [B, W], as a
    fixed-shape scatter: (nodes [E], on [E] bool, leaf [E]) with E = W * B * L (on CPU and
    not ``static``, L cut to the positions some path spans), ``nodes``
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
    lo, hi = 0, L
    if leaves.device.type == "cpu" and not static:  # only the positions some path uses (a host read: free on CPU)
        lo, hi = int(first.min()), max(int(end.max()), int(first.min()) + 1)
    ids = tree.node_at.view(B * N, L).index_select(0, leaf)[:, lo:hi].clamp(min=0)  # [W * B, hi - lo]
    at = torch.arange(lo, hi, device=leaves.device)
    on = (at >= first[:, None]) & (at < end[:, None]) & active.reshape(B, W).T.reshape(-1, 1)
    which = torch.arange(W * B, device=leaves.device)[:, None].expand(-1, hi - lo)
    return (base[:, None] + ids).reshape(-1), on.reshape(-1), which.reshape(-1)


def backup(tree: Tree, leaves: torch.Tensor, active: torch.Tensor, *, static: bool = False) -> None:
    """Add each leaf's value to every node on its path, for leaves [B] or [B, W] (a leaf
    selected twice counts twice), with one scatter."""
    nodes, on, which = _paths(tree, leaves, active, static=static)
    B, N = tree.visits.shape
    flat = (_rows(B, leaves.device) * N)[:, None] + leaves.reshape(B, -1)  # [B, W]
    values = tree.value.view(-1).index_select(0, flat.T.reshape(-1))  # [W * B] leaf-major
    verdict = tree.verdict.view(-1).index_select(0, flat.T.reshape(-1))  # [W * B]
    tree.visits.view(-1).index_add_(0, nodes, on.to(tree.visits.dtype))
    tree.value_sum.view(-1).index_add_(0, nodes, values.index_select(0, which) * on)
    judged = (verdict.index_select(0, which) & on).to(tree.verdicts.dtype)
    tree.verdicts.view(-1).index_add_(0, nodes, judged)
    tree.verdict_sum.view(-1).index_add_(0, nodes, values.index_select(0, which) * judged)


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
    reward net's P(correct), else a verdict itself: the count says nothing there)."""
    children = _at(tree.children, tree.root)  # [B, K]
    rows = torch.arange(tree.batch, device=children.device)[:, None]
    safe = children.clamp(min=0)
    n = tree.verdicts[rows, safe]
    ok = (children >= 0) & (n > 0) & ~tree.terminal[rows, safe]
    mean = tree.verdict_sum[rows, safe] / n.clamp(min=1)  # [B, K]
    net = tree.value[rows, safe]
    pair = ok[:, :, None] & ok[:, None, :] & (mean[:, :, None] > mean[:, None, :])  # [B, K, K]: i better than j
    d = net[:, :, None] - net[:, None, :]
    agree = torch.where(d > 0, 1.0, torch.where(d == 0, 0.5, 0.0)) * pair
    return agree.sum((1, 2)), pair.sum((1, 2)).to(agree.dtype)


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


def advance(
    tree: Tree,
    actions: torch.Tensor,
    active: torch.Tensor,
    evaluator: LeafEvaluator,
    *,
    eos_id: int,
    static: bool = False,
) -> None:
    """Move each active root to the chosen child, creating and evaluating it if new."""
    arange = torch.arange(tree.batch, device=actions.device)
    child = tree.children[arange, tree.root, actions]
    child = add_children(tree, tree.root, actions, active & (child < 0), eos_id=eos_id, static=static)
    tree.root.copy_(torch.where(active, child, tree.root))
    evaluate_leaves(tree, tree.root[:, None], active[:, None], evaluator, static=static)


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
    for c in range(calls):
        simulate(tree, unsure, evaluator, cfg, eos_id=eos_id, levels=depth + c + 1, graphs=graphs)
    visit_probs = root_visit_probs(tree)  # [B, K]
    policy = improved(
        tree, prior, visit_probs=visit_probs, value_scale=cfg.value_scale, maxvisit_init=cfg.maxvisit_init
    )  # [B, K]
    searched = unsure & (cfg.num_simulations > 0)
    informative = searched & root_evidence(tree)
    agree, pairs = sibling_pairs(tree)
    advance(tree, choose(visit_probs, cfg.temperature, generator), active, evaluator, eos_id=eos_id, static=cfg.static)
    return Move(
        visit_probs,
        policy,
        searched,
        depth=min(max(depth + calls - 1, 0), tree.tokens.shape[2] - 1),
        informative=informative,
        sibling=(agree * searched, pairs * searched),
        prior_choice=prior.argmax(1),
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
    for c in range(calls):
        simulate(tree, unsure, evaluator, cfg, eos_id=eos_id, levels=depth + c + 1, root_policy=root_policy)
    sq = sigma_q()
    _, n = root_children(tree)
    action = gumbel.final_action(g, logits, sq, n - before)
    policy = gumbel.improved_policy(logits, sq)
    searched = unsure & (cfg.num_simulations > 0)
    informative = searched & root_evidence(tree)
    visit_probs = root_visit_probs(tree)
    agree, pairs = sibling_pairs(tree)
    advance(tree, action, active, evaluator, eos_id=eos_id, static=cfg.static)
    return Move(
        visit_probs,
        policy,
        searched,
        depth=min(max(depth + calls - 1, 0), tree.tokens.shape[2] - 1),
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
    evaluate_leaves(
        tree, tree.root[:, None], torch.ones(B, 1, dtype=torch.bool, device=device), evaluator, static=cfg.static
    )  # the roots
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
