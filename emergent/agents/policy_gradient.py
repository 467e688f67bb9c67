"""Policy gradient (AlphaGo's RL stage; GRPO / RLOO): a group of traces per problem, each
weighted by its reward minus a baseline (the group's mean, or the reward net's value of
the prompt), with an optional KL penalty to the starting policy.

``improve.updates_per_iter`` clipped steps are taken on each batch (PPO's ratio clip,
as GRPO): the first step's log-probs are the ratio's reference, so with one update the
ratio is exactly 1 and the step is REINFORCE with a baseline.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from emergent import tags
from emergent.envs import TOKENIZER

from .data_parallel import masked_mean
from .method import register_method
from .model import upcast
from .records import Experience, Prompts, StepResult
from .sections import improve_keys
from .self_improvement import SelfImprover, judge, learned, make_experience, sample_traces
from .token_batch import encode_batch


@dataclass(frozen=True)
class ValueBaseline:
    """``improve.baseline=value``: the reward net's P(correct) at each prompt, the payload of
    policy gradient's Experience."""

    values: np.ndarray  # [P]


def advantages(experience: Experience, samples: int, baseline: str) -> tuple[np.ndarray, np.ndarray]:
    """(advantage [R], reward [R]): a trace that never ended earns nothing."""
    reward = np.where(experience.finished, experience.scores, 0.0)
    if baseline == "group":  # GRPO/RLOO: each trace against its problem's group
        groups = reward.reshape(len(experience.prompts), samples)
        mean = groups.mean(1, keepdims=True)
        std = groups.std(1, keepdims=True)
        return ((groups - mean) / (std + 1e-4)).reshape(-1), reward
    return reward - experience.payload.values[experience.rows], reward


@dataclass(frozen=True)
class PolicyGradientConfig:
    """The ``improve.*`` keys policy gradient reads (their meaning: ``ImproveConfig``)."""

    problems_per_iter: int
    updates_per_iter: int
    samples: int
    temperature: float
    reward_source: str
    baseline: str
    kl_coef: float
    clip_ratio: float


@register_method
class PolicyGradient(SelfImprover):
    name = "policy_gradient"
    Config = PolicyGradientConfig
    reads: ClassVar[tuple[str, ...]] = (*SelfImprover.reads, *improve_keys(PolicyGradientConfig))

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.reference = copy.deepcopy(self.policy).eval() if self.cfg.kl_coef > 0 else None
        if self.reference is not None:
            self.reference.requires_grad_(False)

    def collect(self, problems: Prompts) -> Experience:
        c = self.cfg
        ro = sample_traces(self, problems, c.samples, c.temperature)
        labels, scores, reward_flops = judge(self, ro, problems, vote=False, source=c.reward_source)
        flops = {tags.GENERATE: ro.flops, tags.REWARD: reward_flops}
        baseline = None
        if c.baseline == "value":  # the reward net's value of the prompt state as a learned baseline
            baseline, f = self.reward_trainer.score(
                list(problems.prompts), [""] * len(problems.prompts), at_prompt=True
            )
            flops[tags.REWARD] += f
        return make_experience(
            self,
            problems,
            ro.rows,
            ro.completions,
            ro.finished,
            labels,
            scores,
            flops,
            scalars={tags.TRAIN_SAMPLE_ACCURACY: float(np.mean(labels))},
            payload=None if baseline is None else ValueBaseline(baseline),
        )

    def learn(self, experience: Experience) -> StepResult:
        """The reward net learns the batch's labels; then ``improve.updates_per_iter``
        clipped steps on the batch, each trace weighted by its advantage."""
        rewarded = self.reward_trainer.update(experience, self.learn_rng)
        c = self.cfg
        adv, reward = advantages(experience, c.samples, c.baseline)
        batch = encode_batch(TOKENIZER, experience.prompt_of, experience.completions, self.policy.cfg.max_len)
        # a trace cut off by the context had no EOS: do not train the EOS it never wrote
        cut = torch.as_tensor(~experience.finished)
        last = batch.loss_mask.cumsum(1).argmax(1)
        batch.loss_mask[torch.arange(len(last))[cut], last[cut]] = 0
        batch = batch.to(self.device)
        A = torch.as_tensor(adv, dtype=torch.float32, device=self.device)[:, None]  # [R, 1]
        R, T = batch.inputs.shape
        # the first step's log-probs (the ratio's reference) and the KL anchor's (it does not
        # move): computed once, by the first update, for the rows this learner takes
        first = {}

        def loss_fn(batch, A):
            logits = upcast(self.policy(batch.inputs))
            logp = torch.log_softmax(logits, -1).gather(2, batch.targets[..., None]).squeeze(-1)  # [R, T]
            ratio = (logp - first.setdefault("logp", logp.detach())).exp()
            clipped = ratio.clamp(1 - c.clip_ratio, 1 + c.clip_ratio)
            loss = masked_mean(-torch.minimum(ratio * A, clipped * A), batch.loss_mask)
            kl = torch.zeros((), device=logp.device)
            if self.reference is not None:
                if "ref" not in first:
                    with torch.no_grad():
                        ref = torch.log_softmax(upcast(self.reference(batch.inputs)), -1)
                        first["ref"] = ref.gather(2, batch.targets[..., None]).squeeze(-1)  # [R, T]
                delta = first["ref"] - logp
                kl = masked_mean(delta.exp() - delta - 1, batch.loss_mask)  # k3 estimator, >= 0
                loss = loss + c.kl_coef * kl
            return loss, kl.detach()

        updates = [self.trainer.step_batch(loss_fn, batch, A) for _ in range(c.updates_per_iter)]
        if self.reference is not None:  # the anchor's one forward
            updates[0] = updates[0]._replace(
                flops=updates[0].flops + self.policy.flops_per_token(T, backward=False) * R * T
            )
        scalars = {tags.TRAIN_REWARD_MEAN: float(np.mean(reward)), tags.TRAIN_KL: float(updates[-1].aux)}
        return learned(experience, updates, scalars, rewarded)
