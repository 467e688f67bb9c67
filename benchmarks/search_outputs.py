"""Every search output of a fixed set of searches, to compare two checkouts bit for bit (a
refactor of the search must leave them equal).

  PYTHONPATH=<old checkout> python benchmarks/search_outputs.py old.pt
  PYTHONPATH=<new checkout> python benchmarks/search_outputs.py new.pt
  python benchmarks/search_outputs.py --compare old.pt new.pt

Searches: two position schemes (learned, rope) x PUCT and Gumbel roots x net and mixed leaf
values x the default path and the fixed-shape one (``search.static``, PUCT with net leaves
only), 12 simulations, 3 leaves a call, top-4, four prompts, verifier terminal values, random
tiny networks from seed 0. Prints the number of searches, then (``--compare``) the
(search, field) pairs whose tensors differ.
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from emergent.agents.model import ModelConfig, TransformerLM
from emergent.agents.policy_value import PolicyValueEvaluator
from emergent.agents.reward_net import RewardNet
from emergent.agents.search import SearchConfig, search


def outputs() -> dict:
    torch.manual_seed(0)
    out = {}
    for pos in ("learned", "rope"):
        cfg = ModelConfig(n_layer=2, n_head=2, d_model=32, max_len=24, pos=pos)
        policy, value = TransformerLM(cfg, 25), RewardNet(cfg, 25)
        torch.nn.init.normal_(value.head.weight, std=0.5)  # a value head with opinions
        rng = np.random.default_rng(1)
        prompts = [np.concatenate([[1], rng.integers(3, 25, size=n)]) for n in (3, 7, 5, 4)]

        def verify(rows, comps):
            return np.array([len(c) % 3 == 0 for c in comps])

        for root in ("puct", "gumbel"):
            for leaf in ("net", "mix"):
                for static in (False, True):
                    if static and (root == "gumbel" or leaf == "mix"):
                        continue  # refused combinations
                    sc = SearchConfig(
                        num_simulations=12,
                        leaves_per_call=3,
                        top_k=4,
                        terminal_value="verifier",
                        root=root,
                        leaf_value=leaf,
                        static=static,
                        policy_target="completed_q",
                        **({"dirichlet_fraction": 0.0} if root == "gumbel" else {}),
                    )
                    ev = PolicyValueEvaluator.for_search(policy, value, sc, prompts, verify)
                    o = search(
                        prompts, ev, sc, max_len=24, vocab_size=25, eos_id=2, generator=torch.Generator().manual_seed(3)
                    )
                    fields = {k: v for k, v in o._asdict().items() if isinstance(v, torch.Tensor)}
                    out[f"{pos}/{root}/{leaf}/{'static' if static else 'default'}"] = fields
    return out


if __name__ == "__main__":
    if sys.argv[1] == "--compare":
        a, b = torch.load(sys.argv[2]), torch.load(sys.argv[3])
        differ = [(k, f) for k in a for f in a[k] if f in b.get(k, {}) and not torch.equal(a[k][f], b[k][f])]
        print(f"{len(a)} searches, {sum(len(v) for v in a.values())} tensors; differing: {differ}")
    else:
        out = outputs()
        torch.save(out, sys.argv[1])
        print(f"{len(out)} searches written to {sys.argv[1]}")
