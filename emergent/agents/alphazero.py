"""AlphaZero-style self-play: every move chosen by a tree search whose leaves the
reward-and-objective network values; the policy learns the search's improved policy
(visit distributions, or Gumbel MuZero's completed-Q policy) at the moves the search
ran, from a replay of recent searched traces."""
from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from emergent import tags
from emergent.envs import TOKENIZER

from .token_batch import encode_batch
from .learner import Update, autocast
from .method import SelfImprover, register_method
from .model import upcast
from .policy_value import PolicyValueEvaluator, output_completions, state_verifier
from .records import Experience, Prompts, Replay, Trace
from .expert_iteration import replay_nll_updates
from .search import search


@register_method
class AlphaZero(SelfImprover):
    name = "alphazero"
    reads: ClassVar[tuple[str, ...]] = (*SelfImprover.reads, "improve.replay_size", "improve.train_batch",
                                        "improve.learn_from", "search.*")

    def __init__(self, policy, cfg, device) -> None:
        super().__init__(policy, cfg, device)
        self.search_cfg = cfg.search
        self.replay = Replay(self.cfg.replay_size)  # recent searched traces with their targets

    def collect(self, batch: Prompts) -> Experience:
        s = self.search_cfg
        ids = TOKENIZER.encode_prompts(batch.prompts)
        ev = PolicyValueEvaluator(self.policy, self.reward_net, top_k=s.top_k, terminal=s.terminal_value,
                                  verifier=state_verifier([len(i) for i in ids], batch.verify), kv_cache=s.kv_cache)
        self.policy.eval()
        self.reward_net.eval()
        with autocast(self.device):
            out = search(ids, ev, s, max_len=self.policy.cfg.max_len, vocab_size=self.policy.vocab_size,
                         eos_id=TOKENIZER.eos_id, generator=self.generator, device=self.device)
        completions = output_completions(out)
        last = out.tokens.gather(1, (out.length - 1).clamp(min=0)[:, None]).squeeze(1)
        finished = (last == TOKENIZER.eos_id).cpu().numpy()
        rows = np.arange(len(batch.prompts))
        outcome = batch.verify(rows, completions).astype(float) * finished
        # targets only where the search ran: a confident move's distribution is the policy's
        # own prior (or what an earlier search of that subtree left), and cross-entropy to it
        # would teach nothing but a pull back to the policy that wrote it
        targets = out.policy * out.searched[..., None]
        moves = out.moves.sum().clamp(min=1)
        scalars = {tags.TRAIN_SAMPLE_ACCURACY: float(outcome.mean()),
                   tags.SEARCH_SEARCHED_FRACTION: float(out.searched.sum() / moves)}
        return self.make_experience(batch, rows, completions, finished, outcome, outcome,
                               {tags.SEARCH: ev.flops, tags.REWARD: 0.0}, scalars=scalars,
                               targets=tuple(targets[b, : int(out.moves[b])].cpu() for b in rows))

    def remember(self, experience: Experience) -> None:
        prompts = experience.prompt_of
        if self.cfg.learn_from == "solved":  # the accepted traces, learned token by token
            self.replay.add(Trace(prompts[i], experience.completions[i]) for i in np.flatnonzero(experience.accepted))
            return
        self.replay.add(Trace(prompts[i], experience.completions[i], float(experience.labels[i]), experience.targets[i])
                        for i in range(experience.size))

    def improve(self, experience: Experience) -> tuple[list[Update], dict[str, float]]:
        """Cross-entropy of the policy's next-token distributions to the improved policy,
        at the searched moves of a draw from the replay; a draw with none takes no step.
        ``improve.learn_from=solved``: maximum likelihood of accepted searched traces."""
        if self.cfg.learn_from == "solved":
            return replay_nll_updates(self), {}
        updates = []
        for _ in range(self.cfg.updates_per_iter):
            items = self.replay.sample(self.learn_rng, self.cfg.train_batch)
            batch = encode_batch(TOKENIZER, [t.prompt for t in items], [t.completion for t in items],
                                 self.policy.cfg.max_len)
            B, T = batch.inputs.shape
            target = torch.zeros(B, T, self.policy.vocab_size)
            for row, t in enumerate(items):  # move m's target sits at the position predicting token m
                start = len(t.prompt)  # BOS + prompt: the last prompt token is at index len(prompt)
                v = t.target[: T - start]
                target[row, start: start + len(v)] = v
            weight = (target.sum(-1) > 0).float()  # moves the search ran at
            if not bool(weight.any()):  # nothing searched in this draw: no target, no step (not even decay)
                continue
            target, weight, inputs = target.to(self.device), weight.to(self.device), batch.inputs.to(self.device)

            def loss_fn(target=target, weight=weight, inputs=inputs):
                logp = torch.log_softmax(upcast(self.policy(inputs)), -1)
                return -(target * logp).sum(-1).mul(weight).sum() / weight.sum().clamp(min=1)

            updates.append(self.learner.step(loss_fn, tokens=B * T,
                                             flops=self.policy.flops_per_token(T, backward=True) * B * T))
        return updates, {}
