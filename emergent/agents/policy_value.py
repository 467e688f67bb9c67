"""What connects the search to networks and to text: the policy/value leaf evaluator, and
the adapters between token states and completions (used by AlphaZero and by search eval)."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from emergent.envs.tokenizer import TOKENIZER

from .model import upcast
from .rollouts import complete_greedily
from .search import Expansion, SearchConfig, SearchOutput, States, Tree
from .tree_kv import TreeKV, TreePlan


def state_verifier(prompt_lengths: Sequence[int], score: Callable[[np.ndarray, list[str]], np.ndarray]):
    """Adapt ``score(problem rows, completions) -> [M]`` to ``terminal_value``'s verifier:
    the completion of a state is its tokens after its problem's prompt, EOS dropped."""

    def terminal(states: States) -> torch.Tensor:
        r = states.rows.cpu().numpy()
        comps = TOKENIZER.decode_spans(
            states.tokens.cpu().numpy(), [prompt_lengths[i] for i in r], states.lengths.tolist()
        )
        return torch.as_tensor(score(r, comps), dtype=torch.float32, device=states.tokens.device)

    return terminal


def output_completions(out: SearchOutput) -> list[str]:
    """The completion each search wrote, EOS dropped."""
    return TOKENIZER.decode_spans(out.tokens.cpu().numpy(), out.prompt_length.tolist(), out.length.tolist())


# -- the network evaluator -----------------------------------------------------------------


class PolicyValueEvaluator:
    """Priors from the policy's top-k tokens, values from the reward-and-objective network.

    ``kv_cache`` (the default): each network keeps the keys and values of every node it
    has evaluated (``TreeKV``), so a call runs one token per pending state: the prompts
    once per search, then each new state's last token attending over its ancestors' keys.
    Without it each call is one right-padded forward over the M pending states' whole
    prefixes (causal attention: the padding after a state's last token cannot reach it):
    the reference the cache is tested against, equal up to float rounding.
    ``terminal_value`` scores finished states with ``verifier`` (``States`` -> [M]) or with
    the network. ``leaf_value`` values a new non-terminal leaf by the reward net (``net``),
    by the verifier's verdict on the policy's greedy completion of it (``rollout``: one
    batched, KV-cached ``generate`` over the call's leaves; a completion that runs out of
    context scores 0), or by ``(1 - rollout_weight) * net + rollout_weight * rollout``
    (``mix``, AlphaGo's lambda). ``flops`` accumulates what the calls cost.
    """

    def __init__(
        self,
        policy,
        reward_net,
        *,
        top_k: int,
        terminal: str = "verifier",
        verifier: Callable[[States], torch.Tensor] | None = None,
        prior_temperature: float = 1.0,
        kv_cache: bool = True,
        leaf_value: str = "net",
        rollout_weight: float = 0.5,
    ) -> None:
        if (terminal == "verifier" or leaf_value != "net") and verifier is None:
            raise ValueError("terminal_value='verifier' and leaf_value='rollout'/'mix' need a verifier callable")
        self.policy, self.reward_net, self.top_k = policy, reward_net, top_k
        self.terminal, self.verifier, self.prior_temperature = terminal, verifier, prior_temperature
        self.kv_cache = kv_cache
        self.leaf_value, self.rollout_weight = leaf_value, rollout_weight
        # every verdict the search met, as (problem rows [m], full states [m, L'], lengths [m],
        # verdicts [m]): terminal states and rollouts, on and off the path played (``judged``)
        self._judged: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.kv: dict[str, TreeKV] = {}
        self.prompt_hidden: dict[str, torch.Tensor] = {}  # [B, C] per network: node 0's state
        self.flops = 0.0
        self.calls = 0

    @classmethod
    def for_search(
        cls, policy, reward_net, cfg: SearchConfig, prompt_ids: Sequence[np.ndarray], verify: Callable
    ) -> "PolicyValueEvaluator":
        """The evaluator ``search.*`` describes, for the problems ``prompt_ids``, whose states
        ``verify(problem rows, completions) -> [m] bool`` judges (``state_verifier``)."""
        return cls(
            policy,
            reward_net,
            top_k=cfg.top_k,
            terminal=cfg.terminal_value,
            verifier=state_verifier([len(i) for i in prompt_ids], verify),
            kv_cache=cfg.kv_cache,
            leaf_value=cfg.leaf_value,
            rollout_weight=cfg.rollout_weight,
        )

    def _networks(self) -> dict[str, tuple[torch.nn.Module, Callable]]:
        """name -> (the TransformerLM whose keys are kept, the FLOPs per token of its network)."""
        out = {"policy": (self.policy, self.policy.flops_per_token)}
        if self.reward_net is not None:
            out["reward"] = (self.reward_net.trunk, self.reward_net.flops_per_token)
        return out

    def begin(self, tree: Tree) -> None:
        """A search over ``tree``'s prompts starts: with ``kv_cache``, run each prompt once."""
        self.kv.clear()
        self.prompt_hidden.clear()
        if not self.kv_cache:
            return
        B, P = tree.batch, int(tree.length[:, 0].max())
        for name, (net, flops) in self._networks().items():
            self.kv[name] = TreeKV(net, tree)
            with torch.no_grad():
                self.prompt_hidden[name] = self.kv[name].prompts(tree.tokens[:, 0])
            self.flops += flops(P, backward=False) * B * P

    def _pending(self, states: States) -> tuple[torch.Tensor, States | None, TreePlan | None]:
        """(root [M] bool: the states that are a prompt, the others as ``States`` or None,
        their tree-attention plan): one per call, shared by both networks (the plan depends
        on the tree and the states only). ``search.static`` (``states.write`` set): all
        states, prompts too, with the fixed-shape plan; nothing read on the host."""
        root = states.nodes == 0
        if states.write is not None:
            return root, states, self.kv["policy"].static_plan(states)
        if bool(root.all()):
            return root, None, None
        new = states.subset(~root) if bool(root.any()) else states
        return root, new, self.kv["policy"].plan(new)

    def _hidden(self, name: str, states: States, pending) -> torch.Tensor:
        """Final-norm hidden states [M, C] of ``name``'s network after each state's last
        token: a prompt's from ``begin``, any other state's by one token through the network
        (``pending``: ``self._pending(states)``)."""
        kv, flops = self.kv[name], self._networks()[name][1]
        root, new, plan = pending
        if new is None:
            return self.prompt_hidden[name][states.rows]
        out = kv.extend(new, plan)  # [m, C]
        self.flops += flops(kv.context, backward=False) * len(new.rows)  # keys each query row attends over
        if states.write is not None:  # a prompt's state ran again (its keys went to scratch): keep begin's
            return torch.where(root[:, None], self.prompt_hidden[name][states.rows].to(out.dtype), out)
        if new is states:
            return out
        h = torch.empty(len(states.rows), out.shape[1], dtype=out.dtype, device=out.device)
        h[root], h[~root] = self.prompt_hidden[name][states.rows[root]].to(out.dtype), out
        return h

    @torch.no_grad()
    def expand(self, states: States) -> Expansion:
        M = len(states.rows)
        pending = self._pending(states) if self.kv_cache else None
        if self.kv_cache:
            logits = upcast(self.policy.lm_head(self._hidden("policy", states, pending)))  # [M, V]
        else:
            x = self._trim(states)
            T = x.shape[1]
            logits = upcast(self.policy(x)[torch.arange(M, device=x.device), states.lengths - 1])
            self.flops += self.policy.flops_per_token(T, backward=False) * M * T
        logp = F.log_softmax(logits / self.prior_temperature, -1)
        top, idx = logp.topk(self.top_k, -1)
        prior = torch.softmax(top, -1)
        self.calls += 1
        if self.leaf_value == "net":
            return Expansion(prior, idx, self._value(states, pending))
        verdict = self.rollout_value(states)
        judged = torch.ones_like(verdict, dtype=torch.bool)
        if self.leaf_value == "rollout":
            return Expansion(prior, idx, verdict, verdict=judged)
        net = self._value(states, pending)
        value = (1 - self.rollout_weight) * net + self.rollout_weight * verdict
        return Expansion(prior, idx, value, verdict=judged, net_value=net, verdict_value=verdict)

    @torch.no_grad()
    def rollout_value(self, states: States) -> torch.Tensor:
        """The verifier's verdict [M] on the policy's greedy completion of each state: the
        leaf's value on the verifier's own scale (0 where the completion runs out of context).
        One ``generate`` call for all M states; its cost is counted as sampling's is."""
        tokens, lengths, finished, flops = complete_greedily(self.policy, states.tokens, states.lengths)
        done = States(states.rows, states.nodes, tokens, lengths, states.node_at)
        self.flops += flops
        verdict = self.verifier(done).float() * finished
        self._judged.append((done.rows, done.tokens, done.lengths, verdict))
        return verdict

    @property
    def terminal_from_network(self) -> bool:
        """Terminal states are valued as ``expand`` values any state (``LeafEvaluator``)."""
        return self.terminal != "verifier"

    @torch.no_grad()
    def terminal_value(self, states: States) -> torch.Tensor:
        if self.terminal == "verifier":
            verdict = self.verifier(states)
            self._judged.append((states.rows, states.tokens, states.lengths, verdict))
            return verdict
        return self._value(states)

    def judged(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Every state the verifier judged during the search (terminal states, and completed
        rollouts), duplicates included: (rows [J], tokens [J, L'], lengths [J], verdicts [J])."""
        if not self._judged:
            return np.zeros(0, np.int64), np.zeros((0, 1), np.int64), np.zeros(0, np.int64), np.zeros(0)
        width = max(t.shape[1] for _, t, _, _ in self._judged)
        pad = [torch.nn.functional.pad(t, (0, width - t.shape[1])) for _, t, _, _ in self._judged]
        return tuple(
            torch.cat(x).cpu().numpy()
            for x in (
                [r for r, *_ in self._judged],
                pad,
                [n for _, _, n, _ in self._judged],
                [v.float() for *_, v in self._judged],
            )
        )

    def _value(self, states: States, pending=None) -> torch.Tensor:
        """The reward net's P(correct) of each state [M] (0.5 everywhere without one)."""
        if self.reward_net is None:  # no value network: every state is a coin flip
            return torch.full((len(states.rows),), 0.5, device=states.tokens.device)
        if self.kv_cache:
            h = self._hidden("reward", states, pending or self._pending(states))
            return torch.sigmoid(upcast(self.reward_net.head(h).squeeze(-1)))
        x = self._trim(states)
        self.flops += self.reward_net.flops_per_token(x.shape[1], backward=False) * x.numel()
        return self.reward_net.value_at(x, states.lengths)

    @staticmethod
    def _trim(states: States) -> torch.Tensor:
        """The states' tokens up to the longest (the whole context under ``search.static``:
        its length is not read on the host)."""
        return states.tokens if states.write is not None else states.tokens[:, : int(states.lengths.max())]
