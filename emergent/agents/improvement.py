"""Does the search's improved policy pick better moves than the policy it improves? Measured
where it matters, at the informative moves, by the verifier.

At each informative move of a searched trace where the improved policy's argmax differs from
the prior's (the policy's own argmax there), both choices are completed greedily by the policy
from the trace's prefix and judged. The **improvement win rate** is the share of the decided
pairs (one completion right, the other wrong) that the improved policy's choice wins: above
0.5, the targets the policy learns from point at better moves than it would make itself.
All pairs are completed in one batched, KV-cached ``generate`` call.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np
import torch

from emergent.envs.tokenizer import TOKENIZER

from .model import TransformerLM
from .search import SearchOutput


class Improvement(NamedTuple):
    wins: int      # decided pairs the improved policy's choice won
    losses: int    # decided pairs the prior's choice won
    ties: int      # pairs judged alike (both right or both wrong)
    flops: float   # what the completions cost (a diagnostic: not in any run's ledger)

    @property
    def win_rate(self) -> float:
        decided = self.wins + self.losses
        return self.wins / decided if decided else float("nan")


@torch.no_grad()
def improvement_outcomes(policy: TransformerLM, out: SearchOutput,
                         verify: Callable[[np.ndarray, list[str]], np.ndarray]) -> Improvement:
    """Pairs at ``out.informative`` moves: improved policy's argmax vs the prior's, each
    completed greedily and judged by ``verify(problem rows, completions)``."""
    informative = out.informative
    if informative is None or not bool(informative.any()):
        return Improvement(0, 0, 0, 0.0)
    L = policy.cfg.max_len
    tokens = out.tokens                                                   # [B, L]
    logits = policy(tokens[:, :-1])                                       # [B, L - 1, V]
    b, m = informative.nonzero(as_tuple=True)                             # [P] trace, move
    at = out.prompt_length[b] + m                                         # where move m's token sits
    prior = logits[b, at - 1].argmax(-1)                                  # [P]
    target = out.policy[b, m].argmax(-1)
    differ = (prior != target).nonzero().squeeze(1)
    if not len(differ):
        return Improvement(0, 0, 0, 0.0)
    b, at = b[differ], at[differ]
    choices = torch.cat([target[differ], prior[differ]])                  # [2D]: improved, then prior
    rows, ends = b.repeat(2), at.repeat(2) + 1                            # each prefix + its choice
    states = tokens[rows].clone()
    states[torch.arange(len(rows)), ends - 1] = choices
    ended = (choices == TOKENIZER.eos_id) | (ends >= L)                   # nothing left to complete
    todo = (~ended).nonzero().squeeze(1)
    full_len, finished, flops = ends.clone(), choices == TOKENIZER.eos_id, 0.0
    if len(todo):
        cpu = states.cpu().numpy()
        gen = policy.generate([cpu[i, :e] for i, e in zip(todo.tolist(), ends[todo].tolist())], L,
                              eos_id=TOKENIZER.eos_id, pad_id=TOKENIZER.pad_id, temperature=0.0)
        n = gen.tokens.shape[1]
        states = torch.cat([states, states.new_zeros(len(states), n)], 1)  # [2D, L + n]
        grown = states[todo]
        grown.scatter_(1, ends[todo, None] + torch.arange(n, device=states.device), gen.tokens.to(states.device))
        states[todo] = grown
        full_len[todo] = ends[todo] + gen.lengths.to(ends.device)
        finished[todo] = gen.finished.to(finished.device)
        Tp = int(ends.max())
        flops = (policy.flops_per_token(Tp, backward=False) * len(todo) * Tp
                 + policy.flops_per_token(Tp + n, backward=False) * len(todo) * n)
    starts = out.prompt_length[rows].tolist()
    completions = TOKENIZER.decode_spans(states.cpu().numpy(), starts, full_len.tolist())
    right = verify(rows.cpu().numpy(), completions).astype(bool) & finished.cpu().numpy()
    mine, theirs = right[: len(differ)], right[len(differ):]
    return Improvement(int((mine & ~theirs).sum()), int((theirs & ~mine).sum()), int((mine == theirs).sum()), flops)
