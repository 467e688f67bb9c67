"""Does the search's improved policy pick better moves than the policy it improves? Measured
where it matters, at the informative moves, by the verifier.

At each informative move of a searched trace where the improved policy's argmax differs from
the prior's (the policy's own argmax there), both choices are completed greedily by the policy
from the trace's prefix and judged. The **improvement win rate** is the share of the decided
pairs (one completion right, the other wrong) that the improved policy's choice wins: above
0.5, the targets the policy learns from point at better moves than it would make itself.
All pairs are completed in one batched, KV-cached ``generate`` call.

With leaves valued by greedy rollouts (``search.leaf_value=rollout | mix``) the greedy pair is
nearly decided by the very completions that shaped the target. ``samples`` > 0 measures it
apart from them: each choice continued by ``samples`` completions sampled at temperature 1,
and a pair is won when the improved choice's completions are right more often than the
prior's (lost when less often): does the target raise the policy's own success rate?
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np
import torch

from emergent.envs.tokenizer import TOKENIZER

from .model import TransformerLM
from .rollouts import complete_greedily
from .search import SearchOutput


class Improvement(NamedTuple):
    wins: int  # decided pairs the improved policy's choice won
    losses: int  # decided pairs the prior's choice won
    ties: int  # pairs judged alike (both right or both wrong)

    @property
    def win_rate(self) -> float:
        decided = self.wins + self.losses
        return self.wins / decided if decided else float("nan")


def improvement_outcomes(
    policy: TransformerLM,
    out: SearchOutput,
    verify: Callable[[np.ndarray, list[str]], np.ndarray],
    *,
    samples: int = 0,
    generator: torch.Generator | None = None,
) -> Improvement:
    """Pairs at ``out.informative`` moves: the improved policy's argmax against the prior's
    (``out.prior_token``, what the search's own expansion ranked first), each completed
    greedily (or by ``samples`` sampled completions each, from ``generator``) and judged by
    ``verify(problem rows, completions)``. Its compute is a measurement's, in no ledger."""
    informative = out.informative
    if informative is None or not bool(informative.any()):
        return Improvement(0, 0, 0)
    b, m = informative.nonzero(as_tuple=True)  # [P] trace, move
    prior, target = out.prior_token[b, m], out.policy[b, m].argmax(-1)  # [P] tokens
    differ = (prior != target).nonzero().squeeze(1)
    if not len(differ):
        return Improvement(0, 0, 0)
    b, at = b[differ], (out.prompt_length[b] + m)[differ]  # where move m's token sits
    D, k = len(differ), max(samples, 1)
    choices = torch.cat([target[differ], prior[differ]]).repeat_interleave(k)  # [2Dk]: improved, then prior
    rows, ends = b.repeat(2).repeat_interleave(k), (at.repeat(2) + 1).repeat_interleave(k)  # prefix + choice
    states = out.tokens[rows].clone()
    states[torch.arange(len(rows)), ends - 1] = choices
    finished = choices == TOKENIZER.eos_id  # an EOS choice ends its trace
    todo = (~finished & (ends < policy.cfg.max_len)).nonzero().squeeze(1)  # the others, where room is left
    lengths = ends.clone()
    if len(todo):
        grown, lengths[todo], finished[todo], _ = complete_greedily(
            policy, states[todo], ends[todo], temperature=1.0 if samples else 0.0, generator=generator
        )
        states = torch.cat([states, states.new_zeros(len(rows), grown.shape[1] - states.shape[1])], 1)
        states[todo] = grown
    completions = TOKENIZER.decode_spans(states.cpu().numpy(), out.prompt_length[rows].tolist(), lengths.tolist())
    right = verify(rows.cpu().numpy(), completions).astype(bool) & finished.cpu().numpy()
    right = right.reshape(2, D, k).sum(2)  # [2, D] right completions of each choice
    mine, theirs = right[0], right[1]
    return Improvement(int((mine > theirs).sum()), int((theirs > mine).sum()), int((mine == theirs).sum()))
