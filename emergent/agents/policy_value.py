"""What connects the search to networks and to text: the policy/value leaf evaluator, and
the adapters between token states and completions (used by AlphaZero and by search eval)."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from emergent.envs.tokenizer import TOKENIZER

from .search import Expansion, SearchOutput


def state_verifier(prompt_lengths: Sequence[int], score: Callable[[np.ndarray, list[str]], np.ndarray]):
    """Adapt ``score(problem rows, completions) -> [M]`` to ``terminal_value``'s signature:
    the completion of a state is its tokens after its problem's prompt, EOS dropped."""

    def terminal(rows: torch.Tensor, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        r = rows.cpu().numpy()
        comps = TOKENIZER.decode_spans(tokens.cpu().numpy(), [prompt_lengths[i] for i in r], lengths.tolist())
        return torch.as_tensor(score(r, comps), dtype=torch.float32, device=tokens.device)

    return terminal


def output_completions(out: SearchOutput) -> list[str]:
    """The completion each search wrote, EOS dropped."""
    return TOKENIZER.decode_spans(out.tokens.cpu().numpy(), out.prompt_length.tolist(), out.length.tolist())


# -- the network evaluator -----------------------------------------------------------------

class PolicyValueEvaluator:
    """Priors from the policy's top-k tokens, values from the reward-and-objective network.

    Each call is one right-padded forward of each network over the M pending states
    (causal attention: the padding after a state's last token cannot reach it).
    ``terminal_value`` scores finished states with ``verifier`` (rows -> problems) or with
    the network. ``flops`` accumulates what the calls cost.
    """

    def __init__(self, policy, reward_net, *, top_k: int, terminal: str = "verifier",
                 verifier: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                 prior_temperature: float = 1.0) -> None:
        if terminal == "verifier" and verifier is None:
            raise ValueError("terminal_value='verifier' needs a verifier callable")
        self.policy, self.reward_net, self.top_k = policy, reward_net, top_k
        self.terminal, self.verifier, self.prior_temperature = terminal, verifier, prior_temperature
        self.flops = 0.0
        self.calls = 0

    def _trim(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return tokens[:, : int(lengths.max())]

    @torch.no_grad()
    def expand(self, tokens: torch.Tensor, lengths: torch.Tensor) -> Expansion:
        x = self._trim(tokens, lengths)
        M, T = x.shape
        logits = self.policy(x)[torch.arange(M, device=x.device), lengths - 1].float()  # [M, V]
        logp = F.log_softmax(logits / self.prior_temperature, -1)
        top, idx = logp.topk(self.top_k, -1)
        prior = torch.softmax(top, -1)
        self.flops += self.policy.flops_per_token(T, backward=False) * M * T
        if self.reward_net is None:  # no value network: every state is a coin flip
            value = torch.full((M,), 0.5, device=x.device)
        else:
            value = self.reward_net.value_at(x, lengths)
            self.flops += self.reward_net.flops_per_token(T, backward=False) * M * T
        self.calls += 1
        return Expansion(prior, idx, value)

    @torch.no_grad()
    def terminal_value(self, rows: torch.Tensor, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if self.terminal == "verifier":
            return self.verifier(rows, tokens, lengths)
        x = self._trim(tokens, lengths)
        if self.reward_net is None:
            return torch.full((len(x),), 0.5, device=x.device)
        self.flops += self.reward_net.flops_per_token(x.shape[1], backward=False) * x.numel()
        return self.reward_net.value_at(x, lengths)
