"""Keys and values per search-tree node: a leaf is evaluated by one token's forward pass.

A search state is its parent's state plus one token, so a network that has evaluated the
parent already holds the keys and values of every earlier position. ``TreeKV`` keeps,
for one ``TransformerLM`` and a batch of trees:

  prompt_k, prompt_v  [L, B, H, P, D]  the prompts' keys and values (right-padded to P)
  node_k, node_v      [L, B, N, H, D]  the keys and values of the one token each node wrote

and evaluates M new states (each a child of an evaluated node, or a prompt) by running
only their last token, attending over the prompt's keys, the keys its ancestors wrote
(gathered through ``States.node_at``) and its own. That is ``M`` tokens of work per call
instead of ``M x T``: the leaf evaluation of the search costs what one decode step of
generation costs.

It plugs into ``TransformerLM.hidden`` as a cache (``update`` returns the keys and values a
layer's queries attend over), so the attention arithmetic is the model's own. Keys are
laid out [prompt slots | ancestor slots | own slot]; masks hide padding and slots a state
does not have. Order does not matter to attention: positions were applied (learned
embeddings to the input, RoPE to each key) when each key was computed.
"""
from __future__ import annotations

import torch

from .model import TransformerLM
from .search import States, Tree


class TreeKV:
    """Per-node keys and values of one network over the trees of one search.

    One table per layer holds both a tree's nodes and its prompt, so the keys a state
    attends over are one gather: slots [0, N) are nodes (node 0, the prompt, stays unused),
    slots [N, N + P) the prompt's positions.
    """

    def __init__(self, model: TransformerLM, tree: Tree) -> None:
        c = model.cfg
        B, N, _ = tree.tokens.shape
        self.model, self.N, self.H, self.D = model, N, c.n_head, c.d_model // c.n_head
        self.prompt_len = tree.length[:, 0].clone()  # [B]: node 0 of each tree is its prompt
        self.P = int(self.prompt_len.max())
        self.table_shape = (c.n_layer, B, N + self.P, self.H, self.D)
        self.k: torch.Tensor | None = None  # [L, B, N + P, H, D], in the dtype the layers compute in
        self.v: torch.Tensor | None = None
        self.prompt_valid: torch.Tensor | None = None  # [B, P]
        # what ``update`` needs during one forward (set by ``extend``)
        self._rows = self._nodes = self._slots = None
        self.length = 0
        self.shape = (c.n_layer, 0, self.H, 0, self.D)

    def _allocate(self, like: torch.Tensor) -> None:
        self.k = torch.zeros(self.table_shape, dtype=like.dtype, device=like.device)
        self.v = torch.zeros_like(self.k)

    @torch.no_grad()
    def prompts(self, tokens: torch.Tensor) -> torch.Tensor:
        """Run every tree's prompt (``tokens`` [B, L], right-padded) once, keep its keys and
        values; returns the final-norm hidden state at each prompt's last token [B, C]."""
        B = tokens.shape[0]
        x = tokens[:, : self.P]
        cache = self.model.new_cache(B, self.P)
        valid = torch.arange(self.P, device=x.device)[None, :] < self.prompt_len[:, None]  # [B, P]
        h = self.model.hidden(x, None, valid, cache)                                       # [B, P, C]
        self._allocate(cache.k)
        self.k[:, :, self.N :] = cache.k.transpose(2, 3)  # [L, B, H, P, D] -> [L, B, P, H, D]
        self.v[:, :, self.N :] = cache.v.transpose(2, 3)
        self.prompt_valid = valid
        return h[torch.arange(B, device=x.device), self.prompt_len - 1]

    @torch.no_grad()
    def extend(self, states: States) -> torch.Tensor:
        """The final-norm hidden state [M, C] after each state's last token, a child of an
        evaluated node: one token per state through the network; its keys and values are
        kept at its node."""
        M = len(states.rows)
        last = states.lengths - 1                                               # [M] position of the new token
        tok = states.tokens[torch.arange(M, device=last.device), last]          # [M]
        G = int(last.max())                                                     # ancestor slots: positions < last
        path = states.node_at[:, :G]                                            # [M, G] (-1: prompt, or past the state)
        has = (path >= 0) & (torch.arange(G, device=last.device)[None, :] < last[:, None])
        prompt = (self.N + torch.arange(self.P, device=last.device)).expand(M, self.P)
        self._slots = torch.cat([prompt, path.clamp(min=0), states.nodes[:, None]], 1)  # [M, S]
        self._rows, self._nodes = states.rows, states.nodes
        key_valid = torch.cat([self.prompt_valid[states.rows], has, torch.ones(M, 1, dtype=torch.bool,
                                                                                  device=has.device)], 1)
        S = self.P + G + 1
        self.length, self.shape = S - 1, (self.shape[0], M, self.H, S, self.D)  # the query sits at the last slot
        return self.model.hidden(tok[:, None], last[:, None], key_valid, self)[:, 0]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Called by each attention layer with the new token's k, v [M, H, 1, D]: store them
        at the node, return the keys and values it attends over [M, H, S, D]."""
        if self.k is None:
            self._allocate(k)
        rows, nodes, slots = self._rows, self._nodes, self._slots
        self.k[layer, rows, nodes] = k[:, :, 0]
        self.v[layer, rows, nodes] = v[:, :, 0]
        at = (rows[:, None], slots)
        return self.k[layer][at].transpose(1, 2), self.v[layer][at].transpose(1, 2)
