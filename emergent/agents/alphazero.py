"""AlphaZero-style self-play with the search as the expert: every move of a trace is chosen
by a tree search (a PUCT or Gumbel MuZero root; leaves valued by the reward-and-objective
network, by the verdict of a policy rollout, or a mix), and the policy learns what the
search found.

``improve.learn_from``:
  expert  maximum likelihood of the searched traces the verifier accepted, plus
          KL(improved policy || policy restricted to the improved policy's support) at the
          *informative* moves only: those where a verifier's verdict lies below some root
          child. A move whose target is the prior renormalised (nothing below it was ever
          judged) teaches nothing but a pull back to the policy that wrote it; the
          restriction keeps the mass outside the search's top-k from adding a steady
          sharpening gradient as large as the signal.
  all     cross-entropy to the improved policy at every searched move (AlphaZero as first
          built: the baseline the expert mode is measured against)
  solved  the maximum-likelihood half of ``expert`` alone
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from emergent import tags
from emergent.envs import TOKENIZER

from .data_parallel import masked_mean
from .improvement import improvement_outcomes
from .method import register_method
from .model import TransformerLM, upcast
from .policy_value import PolicyValueEvaluator, output_completions
from .records import Experience, Prompts, Replay, StepResult, Trace
from .search import search
from .sections import improve_keys
from .self_improvement import SelfImprover, learned, make_experience, sample_traces
from .supervised import replay_nll_updates
from .token_batch import TokenBatch, encode_batch
from .trainer import Update, autocast


def expert_loss(policy: TransformerLM, batch: TokenBatch, accepted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """NLL of the accepted rows' completion tokens (mean over those tokens) plus the KL of
    ``target`` [B, T, V] to the policy restricted to the target's support, at the positions
    where the target has mass (mean over them). ``accepted`` [B] float."""
    logits = upcast(policy(batch.inputs))  # [B, T, V]
    nll = F.cross_entropy(logits.flatten(0, 1), batch.targets.flatten(), reduction="none").view_as(batch.targets)
    keep = batch.loss_mask * accepted[:, None]  # [B, T]
    loss = masked_mean(nll, keep)
    support = target > 0  # [B, T, V]
    moves = support.any(-1)  # [B, T]
    restricted = logits.masked_fill(~support, -torch.inf)
    logp = restricted - restricted.logsumexp(-1, keepdim=True).nan_to_num(0.0)  # log p on the support
    kl = torch.where(support, target * (target.clamp(min=1e-30).log() - logp), 0.0).sum(-1)  # [B, T]
    return loss + masked_mean(kl, moves.float())


@dataclasses.dataclass(frozen=True)
class SearchTargets:
    """The payload of alphazero's Experience: per trace, the search's improved policy at each
    of its moves."""

    targets: tuple  # [R] of [moves, V] (CPU); 0 rows: a sampled trace, not searched


class _Traces(NamedTuple):
    """One part of a batch's experience: sampled traces, or searched ones."""

    rows: np.ndarray  # [R] problem of each trace
    completions: list[str]  # [R]
    finished: np.ndarray  # [R] bool
    labels: np.ndarray  # [R] the verifier's verdicts (0 when unfinished)
    targets: list  # [R] improved policy per move [moves, V] (0 rows: none)
    flops: dict  # ledger part -> FLOPs
    scalars: dict  # diagnostics
    tree: tuple  # judged tree states for the reward net (Trace)


@dataclasses.dataclass(frozen=True)
class AlphaZeroConfig:
    """The ``improve.*`` keys alphazero reads (their meaning: ``ImproveConfig``); it reads
    ``search.*`` whole (``SearchConfig``)."""

    problems_per_iter: int
    updates_per_iter: int
    replay_size: int
    train_batch: int
    learn_from: str
    sample_first: int
    temperature: float


@register_method
class AlphaZero(SelfImprover):
    name = "alphazero"
    Config = AlphaZeroConfig
    reads: ClassVar[tuple[str, ...]] = (*SelfImprover.reads, *improve_keys(AlphaZeroConfig), "search.*")

    def __init__(self, policy, cfg, device) -> None:
        super().__init__(policy, cfg, device)
        self.search_cfg = cfg.search
        self.replay = Replay(self.cfg.replay_size)  # recent searched traces with their targets

    def reseed(self, seed: int, stream: int = 0) -> None:
        super().reseed(seed, stream)
        # the sampled improvement diagnostic's own stream: measuring draws nothing from collect's
        self.diagnostic_generator = torch.Generator().manual_seed(seed * 1_000_003 + stream + 500_009)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "diagnostic_generator": self.diagnostic_generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if "diagnostic_generator" in state:  # a checkpoint from before the sampled diagnostic has none
            self.diagnostic_generator.set_state(state["diagnostic_generator"])

    def collect(self, problems: Prompts) -> Experience:
        """``improve.sample_first`` k > 0: k sampled traces per problem first (as expert
        iteration's), and the search only for the problems none of them solved; else the
        search for every problem. Sampled traces carry no improved policy (no target)."""
        self.policy.eval()
        self.reward_net.eval()
        parts, todo = [], np.arange(len(problems.prompts))
        if self.cfg.sample_first:
            parts.append(self._sampled(problems))
            todo = np.setdiff1d(todo, parts[0].rows[parts[0].labels > 0])
        if len(todo):
            parts.append(self._searched(problems, todo))
        labels = np.concatenate([p.labels for p in parts])
        flops = {tags.SEARCH: 0.0, tags.REWARD: 0.0}
        scalars = {tags.TRAIN_SAMPLE_ACCURACY: float(labels.mean())}
        for p in parts:
            flops.update(p.flops)
            scalars.update(p.scalars)
        exp = make_experience(
            self,
            problems,
            np.concatenate([p.rows for p in parts]),
            [c for p in parts for c in p.completions],
            np.concatenate([p.finished for p in parts]),
            labels,
            labels,
            flops,
            scalars=scalars,
            payload=SearchTargets(tuple(t for p in parts for t in p.targets)),
        )
        return dataclasses.replace(exp, reward_traces=exp.reward_traces + tuple(t for p in parts for t in p.tree))

    def _sampled(self, problems: Prompts) -> "_Traces":
        """``improve.sample_first`` sampled traces per problem, judged; no targets."""
        ro = sample_traces(self, problems, self.cfg.sample_first, self.cfg.temperature)
        right = problems.verify(ro.rows, ro.completions).astype(float) * ro.finished
        return _Traces(
            ro.rows,
            ro.completions,
            ro.finished,
            right,
            [torch.zeros(0, self.policy.vocab_size)] * len(right),
            {tags.GENERATE: ro.flops},
            {},
            (),
        )

    def _searched(self, problems: Prompts, todo: np.ndarray) -> "_Traces":
        """One searched trace for each of the batch's problems ``todo``, its targets, the
        search's diagnostics and the judged tree states for the reward net."""
        s = self.search_cfg

        def verify(r, comps):  # rows of the searched subset -> the batch's problems
            return problems.verify(todo[np.asarray(r)], comps)

        ids = TOKENIZER.encode_prompts([problems.prompts[i] for i in todo])
        ev = PolicyValueEvaluator.for_search(self.policy, self.reward_net, s, ids, verify)
        with autocast(self.device):
            out = search(
                ids,
                ev,
                s,
                max_len=self.policy.cfg.max_len,
                vocab_size=self.policy.vocab_size,
                eos_id=TOKENIZER.eos_id,
                generator=self.generator,
                device=self.device,
            )
        completions = output_completions(out)
        last = out.tokens.gather(1, (out.length - 1).clamp(min=0)[:, None]).squeeze(1)
        ended = (last == TOKENIZER.eos_id).cpu().numpy()
        outcome = verify(np.arange(len(todo)), completions).astype(float) * ended
        # targets only where they can teach: under ``expert`` the informative moves; else every
        # searched move (a confident move's distribution is the policy's own prior, and
        # cross-entropy to it would teach nothing but a pull back to the policy that wrote it)
        where = out.informative if self.cfg.learn_from == "expert" else out.searched
        policy = out.policy * where[..., None]
        searched = out.searched.sum()
        scalars = {
            tags.SEARCH_SEARCHED_FRACTION: float(searched / out.moves.sum().clamp(min=1)),
            tags.SEARCH_INFORMATIVE_FRACTION: float(out.informative.sum() / searched.clamp(min=1)),
            tags.SEARCH_SOLVED: float(outcome.mean()),
        }
        if s.leaf_value != "rollout" and float(out.sibling_pairs.sum()) > 0:  # rollout values are verdicts themselves
            scalars[tags.REWARD_SIBLING_AUC] = float(out.sibling_agree.sum() / out.sibling_pairs.sum())
            scalars[tags.REWARD_SIBLING_PAIRS] = float(out.sibling_pairs.sum())
        if s.diagnostics:  # on this batch's problems, new to the policy (fresh prompts); not in the ledger
            with autocast(self.device):
                imp = improvement_outcomes(self.policy, out, verify)
            if imp.wins + imp.losses:
                scalars[tags.SEARCH_IMPROVEMENT_WIN_RATE] = imp.win_rate
            scalars[tags.SEARCH_IMPROVEMENT_DECIDED] = float(imp.wins + imp.losses)
            scalars[tags.SEARCH_IMPROVEMENT_WINS] = float(imp.wins)  # a window's rate: mean wins / mean decided
            if s.diagnostic_samples:
                with autocast(self.device):
                    imp = improvement_outcomes(
                        self.policy, out, verify, samples=s.diagnostic_samples, generator=self.diagnostic_generator
                    )
                if imp.wins + imp.losses:
                    scalars[tags.SEARCH_IMPROVEMENT_SAMPLED_WIN_RATE] = imp.win_rate
                scalars[tags.SEARCH_IMPROVEMENT_SAMPLED_DECIDED] = float(imp.wins + imp.losses)
                scalars[tags.SEARCH_IMPROVEMENT_SAMPLED_WINS] = float(imp.wins)
        return _Traces(
            todo,
            completions,
            ended,
            outcome,
            [policy[b, : int(out.moves[b])].cpu() for b in range(len(todo))],
            {tags.SEARCH: ev.flops},
            scalars,
            self.tree_traces(problems, todo, ids, ev),
        )

    def tree_traces(self, problems: Prompts, todo: np.ndarray, ids, ev: PolicyValueEvaluator) -> tuple[Trace, ...]:
        """Up to ``search.tree_traces`` distinct states the verifier judged in the trees (of
        the batch's problems ``todo``), as labelled traces for the reward net (drawn with
        ``collect_rng``)."""
        if not self.search_cfg.tree_traces:
            return ()
        rows, tokens, lengths, verdicts = ev.judged()
        if not len(rows):
            return ()
        texts = TOKENIZER.decode_spans(tokens, [len(ids[r]) for r in rows], lengths.tolist())
        seen = {}
        for r, text, v in zip(rows.tolist(), texts, verdicts.tolist()):
            seen.setdefault((r, text), v)
        keys = list(seen)
        pick = self.collect_rng.permutation(len(keys))[: self.search_cfg.tree_traces]
        return tuple(Trace(problems.prompts[todo[keys[i][0]]], keys[i][1], float(seen[keys[i]])) for i in sorted(pick))

    def learn(self, experience: Experience) -> StepResult:
        """What carries a signal joins the replay (``remember``); the reward net learns the
        batch's labels and the judged tree states; then the policy's updates (``improve``)."""
        self.remember(experience)
        reward = self.reward_trainer.update(experience, self.learn_rng)
        updates, scalars = self.improve(experience)
        return learned(experience, updates, scalars, reward)

    def remember(self, experience: Experience) -> None:
        prompts, targets = experience.prompt_of, experience.payload.targets
        if self.cfg.learn_from == "solved":  # the accepted traces, learned token by token
            self.replay.add(Trace(prompts[i], experience.completions[i]) for i in np.flatnonzero(experience.accepted))
            return
        if self.cfg.learn_from == "expert":  # what carries a signal: an accepted trace, or an informative move
            keep = [i for i in range(experience.size) if experience.accepted[i] or bool(targets[i].any())]
            self.replay.add(
                Trace(prompts[i], experience.completions[i], float(experience.accepted[i]), targets[i]) for i in keep
            )
            return
        self.replay.add(
            Trace(prompts[i], experience.completions[i], float(experience.labels[i]), targets[i])
            for i in range(experience.size)
        )

    def improve(self, experience: Experience) -> tuple[list[Update], dict[str, float]]:
        """``improve.updates_per_iter`` steps on draws from the replay (a draw with nothing to
        learn takes no step, not even weight decay): see the module's docstring."""
        if self.cfg.learn_from == "solved":
            return replay_nll_updates(self), {}
        expert = self.cfg.learn_from == "expert"

        def loss_fn(batch, target, accepted):
            if expert:
                return expert_loss(self.policy, batch, accepted, target)
            logp = torch.log_softmax(upcast(self.policy(batch.inputs)), -1)
            return masked_mean(-(target * logp).sum(-1), (target.sum(-1) > 0).float())  # the searched moves

        updates = []
        for _ in range(self.cfg.updates_per_iter if len(self.replay) else 0):
            items = self.replay.sample(self.learn_rng, self.cfg.train_batch)
            batch = encode_batch(
                TOKENIZER, [t.prompt for t in items], [t.completion for t in items], self.policy.cfg.max_len
            )
            B, T = batch.inputs.shape
            target = torch.zeros(B, T, self.policy.vocab_size)
            for row, t in enumerate(items):  # move m's target sits at the position predicting token m
                start = len(t.prompt)  # BOS + prompt: the last prompt token is at index len(prompt)
                v = t.target[: T - start]
                target[row, start : start + len(v)] = v
            accepted = torch.tensor([t.label for t in items], dtype=torch.float32)
            if not bool((target.sum(-1) > 0).any()) and not (expert and bool(accepted.any())):
                continue
            batch, target, accepted = batch.to(self.device), target.to(self.device), accepted.to(self.device)
            updates.append(self.trainer.step_batch(loss_fn, batch, target, accepted))
        return updates, {}
