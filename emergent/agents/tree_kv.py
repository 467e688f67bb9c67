"""Keys and values per search-tree node: a leaf is evaluated by one token's forward pass.

A search state is its parent's state plus one token, so a network that has evaluated the
parent already holds the keys and values of every earlier position. ``TreeKV`` keeps, for
one ``TransformerLM`` and a batch of trees, one table per layer:

  k, v  [L, B, N + P, H, D]  slots [0, N): the key/value of the one token each node wrote;
                             slots [N, N + P): the tree's prompt (right-padded to P)

and evaluates M new states by running only their last token. The states of one tree form
one row of queries, attending (tree attention, as in speculative decoding's token trees)
over keys gathered once per tree: the prompt and the path down to the tree's root, which
all of its states share, then per state the few nodes from the root down to itself, each
query masked to its own. That is M tokens of work per call instead of M x T, and
P + R + W x G keys gathered per tree instead of W x (P + R + G): the search's leaf
evaluation costs what a decode step of generation costs.

Memory: 2 x L x B x (N + P) x C values per network (C = d_model), in the dtype the layers
compute in (bf16 under CUDA autocast). N is the tree capacity, about moves x (simulations
+ 1): for countdown (L2 d128, 256 problems, 32 simulations) 0.9 GB per network in fp32; a
L8 d512 network at that batch needs about 14 GB each in fp32, 7 GB in bf16.
``search.kv_cache=false`` needs none.

It plugs into ``TransformerLM.hidden`` as a cache (``update`` returns the keys and values
a layer's queries attend over) with an explicit mask, so the arithmetic is the model's
own. Order does not matter to attention: positions were applied (learned embeddings to
the input, RoPE to each key) when each key was computed.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .model import PLACE_SCHEMES, TransformerLM, digit_places
from .search import States, Tree


def _rank_in_group(group: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Each element's rank among the elements of its group (in order of appearance):
    group [M] in 0..G-1, counts [G] its sizes -> [M]."""
    order = torch.argsort(group, stable=True)
    rank = torch.empty_like(group)
    rank[order] = torch.arange(len(group), device=group.device) - (counts.cumsum(0) - counts)[group[order]]
    return rank


class TreePlan(NamedTuple):
    """Where M states' queries sit and which keys each sees: a function of the tree and the
    states only, so the policy's and the reward net's ``TreeKV`` share one per call."""

    trees: torch.Tensor  # [T'] the trees with states
    rows: torch.Tensor  # [M] each state's tree
    nodes: torch.Tensor  # [M] its node
    inv: torch.Tensor  # [M] its tree's index in ``trees``
    slot: torch.Tensor  # [M] its query slot in that tree's row
    slots: torch.Tensor  # [T', S] the key slots each tree's row attends over
    mask: torch.Tensor  # [T', W, S] bool: which of them each query sees
    ids: torch.Tensor  # [T', W] the new token of each query (0 in empty slots)
    pos: torch.Tensor  # [T', W] its position
    context: int  # keys one query attends over, at most (for the FLOP count)


class TreeKV:
    """Per-node keys and values of one network over the trees of one search.

    One table per layer holds both a tree's nodes and its prompt, so the keys a state
    attends over are one gather: slots [0, N) are nodes (node 0, the prompt, stays unused),
    slots [N, N + P) the prompt's positions.
    """

    def __init__(self, model: TransformerLM, tree: Tree) -> None:
        c = model.cfg
        B, N, _ = tree.tokens.shape
        self.model, self.tree, self.N, self.H, self.D = model, tree, N, c.n_head, c.d_model // c.n_head
        self.prompt_len = tree.length[:, 0].clone()  # [B]: node 0 of each tree is its prompt
        self.P = int(self.prompt_len.max())
        self.table_shape = (c.n_layer, B, N + self.P, self.H, self.D)
        self.k: torch.Tensor | None = None  # [L, B, N + P, H, D], in the dtype the layers compute in
        self.v: torch.Tensor | None = None
        self.prompt_valid: torch.Tensor | None = None  # [B, P]
        self._plan: TreePlan | None = None  # what ``update`` needs during one forward (set by ``extend``)
        self.context = 0
        self.length = 0  # read by TransformerLM.hidden, as for any cache (its explicit mask makes it moot)

    # The tables start uninitialised (zeroing 2 x 0.45 GB per network cost 4 % of a countdown
    # search): a forward gathers only slots written before it (the prompts, evaluated nodes,
    # the states it writes first) and slot 0, which masked-out path and union entries point
    # at and which is zeroed here. Every gathered key must be finite even where masked: a NaN
    # score stays NaN under an additive -inf. Tests set ``poison`` to NaN to check all this.
    poison: float | None = None

    def _allocate(self, like: torch.Tensor) -> None:
        kw = dict(dtype=like.dtype, device=like.device)
        make = (
            (lambda: torch.empty(self.table_shape, **kw))
            if self.poison is None
            else (lambda: torch.full(self.table_shape, self.poison, **kw))
        )
        self.k, self.v = make(), make()
        self.k[:, :, 0] = 0
        self.v[:, :, 0] = 0

    @torch.no_grad()
    def prompts(self, tokens: torch.Tensor) -> torch.Tensor:
        """Run every tree's prompt (``tokens`` [B, L], right-padded) once, keep its keys and
        values; returns the final-norm hidden state at each prompt's last token [B, C]."""
        B = tokens.shape[0]
        x = tokens[:, : self.P]
        cache = self.model.new_cache(B, self.P)
        valid = torch.arange(self.P, device=x.device)[None, :] < self.prompt_len[:, None]  # [B, P]
        h = self.model.hidden(x, None, valid, cache)  # [B, P, C]
        self._allocate(cache.k)
        self.k[:, :, self.N :] = cache.k.transpose(2, 3)  # [L, B, H, P, D] -> [L, B, P, H, D]
        self.v[:, :, self.N :] = cache.v.transpose(2, 3)
        self.prompt_valid = valid
        return h[torch.arange(B, device=x.device), self.prompt_len - 1]

    @torch.no_grad()
    def extend(self, states: States, plan: TreePlan | None = None) -> torch.Tensor:
        """The final-norm hidden state [M, C] after each state's last token (each state a
        descendant of its tree's root, not the prompt): one token per state through the
        network; its keys and values are kept at its node. ``plan``: ``self.plan(states)``,
        when another network's ``TreeKV`` over the same tree has made it already."""
        p = plan if plan is not None else self.plan(states)
        self._plan = p
        place = None
        if self.model.cfg.pos in PLACE_SCHEMES:  # a digit's place reads its whole state (its number)
            place = torch.zeros_like(p.ids)
            place[p.inv, p.slot] = digit_places(states.tokens)[
                torch.arange(len(p.inv), device=p.ids.device), states.lengths - 1
            ]
        h = self.model.hidden(p.ids, p.pos, None, self, attn_mask=p.mask[:, None], place=place)  # [T', W, C]
        self.context = p.context
        return h[p.inv, p.slot]

    @torch.no_grad()
    def plan(self, states: States) -> TreePlan:
        """Tree attention: the states of one tree run as one row of queries [W], over one set
        of keys: the prompt, the path to the tree's root (shared by all its states), and the
        union of the nodes on its states' paths below the root, each query masked to its own
        path. Keys gathered per tree: P + R + U (U <= W x G), not W x (P + R + G).
        """
        dev = states.rows.device
        M = len(states.rows)
        last = states.lengths - 1  # [M] position of each new token
        tok = states.tokens[torch.arange(M, device=dev), last]  # [M]
        trees, inv, counts = torch.unique(states.rows, return_inverse=True, return_counts=True)  # [T'], [M], [T']
        slot = _rank_in_group(inv, counts)  # [M] each state's query slot
        T, W = len(trees), int(counts.max())
        # the shared part of each tree: the prompt, then the root's path up to (not including) the root
        root = self.tree.root[trees]
        P_b = self.prompt_len[trees]  # [T']
        start = torch.maximum(P_b, self.tree.length[trees, root] - 1)  # [T'] first position per state
        R = int((start - P_b).max())
        r = torch.arange(R, device=dev)[None, :]
        path = self.tree.node_at[trees, root].gather(1, (P_b[:, None] + r).clamp(max=self.tree.node_at.shape[2] - 1))
        path_valid = r < (start - P_b)[:, None]  # [T', R]
        # below the shared part: the union of the nodes on its states' paths (they overlap: the
        # states of one tree mostly part ways a few tokens below the root), each query
        # masked to its own path: node u is on state m's path iff m wrote u's position with u
        first = start[inv]  # [M]
        G = int((last - first).max()) + 1
        j = torch.arange(G, device=dev)[None, :]
        below = states.node_at.gather(1, (first[:, None] + j).clamp(max=states.node_at.shape[1] - 1))  # [M, G]
        pairs = torch.unique((inv[:, None] * self.N + below.clamp(min=0))[j <= (last - first)[:, None]])  # by tree
        u_tree, u_node = pairs // self.N, pairs % self.N
        u_count = torch.bincount(u_tree, minlength=T)
        U = int(u_count.max())
        u_slot = _rank_in_group(u_tree, u_count)
        union = torch.zeros(T, U, dtype=torch.long, device=dev)
        union_valid = torch.zeros(T, U, dtype=torch.bool, device=dev)
        union[u_tree, u_slot], union_valid[u_tree, u_slot] = u_node, True
        paths = torch.full((T, W, states.node_at.shape[1]), -1, dtype=torch.long, device=dev)
        paths[inv, slot] = states.node_at
        at = (self.tree.length[trees[:, None], union] - 1).clamp(min=0)  # [T', U] u's position
        sees = (paths.gather(2, at[:, None, :].expand(T, W, U)) == union[:, None, :]) & union_valid[:, None, :]
        prompt = (self.N + torch.arange(self.P, device=dev)).expand(T, self.P)
        slots = torch.cat([prompt, path.clamp(min=0), union], 1)  # [T', S]
        shared = torch.cat([self.prompt_valid[trees], path_valid], 1)  # [T', P + R]
        mask = torch.cat([shared[:, None, :].expand(T, W, -1), sees], 2)  # [T', W, S]
        mask[:, :, 0] |= ~mask.any(2)  # an empty query slot sees one key: no row of the softmax is empty
        ids = torch.zeros(T, W, dtype=torch.long, device=dev)
        pos = torch.zeros(T, W, dtype=torch.long, device=dev)
        ids[inv, slot], pos[inv, slot] = tok, last
        return TreePlan(trees, states.rows, states.nodes, inv, slot, slots, mask, ids, pos, self.P + R + G)

    def static_plan(self, states: States) -> TreePlan:
        """The plan of ``search.static``: fixed shapes, no host sync. Each of the M states is
        its own row with one query, over the L keys of its whole path (the prompt's slots,
        then its nodes'; positions past its length masked): M x L keys gathered instead of
        the tree plan's shared prefixes, but no ``unique`` and no shape read from the data.
        Only the states marked ``write`` store their keys and values; the others' go to the
        scratch node, which no path contains."""
        dev = states.rows.device
        M, L = states.tokens.shape
        arange = torch.arange(M, device=dev)
        last = states.lengths - 1  # [M]
        t = torch.arange(L, device=dev)[None, :]  # [1, L]
        prompt = torch.where(t < self.P, self.N + t, 0)  # a prompt position's slot
        slots = torch.where(states.node_at >= 0, states.node_at, prompt)  # [M, L]
        mask = (t <= last[:, None])[:, None, :]  # [M, 1, L]
        write = states.write if states.write is not None else torch.ones_like(states.nodes, dtype=torch.bool)
        nodes = torch.where(write & (states.nodes > 0), states.nodes, self.N - 1)  # node 0 is the prompt's
        zero = torch.zeros_like(arange)
        return TreePlan(
            states.rows,
            states.rows,
            nodes,
            arange,
            zero,
            slots,
            mask,
            states.tokens[arange, last][:, None],
            last[:, None],
            L,
        )

    def advance(self, T: int) -> None:
        pass  # positions live in the tree, not in a running length

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Called by each attention layer with the states' new k, v [T', H, W, D]: store each
        at its node, return the keys and values the queries attend over [T', H, S, D].
        Flat ``index_copy_``/``index_select`` over [B * (N + P)] slots: on CPU a two-index
        gather of these tables costs several times as much."""
        if self.k is None:
            self._allocate(k)
        p = self._plan
        T, S = p.slots.shape
        _, B, NP, H, D = self.k.shape
        out = []
        for table, new in ((self.k[layer].view(B * NP, H, D), k), (self.v[layer].view(B * NP, H, D), v)):
            table.index_copy_(0, p.rows * NP + p.nodes, new.transpose(1, 2)[p.inv, p.slot])  # [M, H, D]
            out.append(
                table.index_select(0, (p.trees[:, None] * NP + p.slots).view(-1)).view(T, S, H, D).transpose(1, 2)
            )
        return out[0], out[1]
