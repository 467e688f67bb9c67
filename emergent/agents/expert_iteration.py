"""Expert iteration (STaR / ReST): sample N traces per problem, keep the ones judged correct
by the verifier, the reward-and-objective network or a majority vote, and train on a
replay of every kept trace by maximum likelihood."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from emergent import tags

from .method import register_method
from .records import Experience, Prompts, Replay, StepResult, Trace
from .sections import improve_keys
from .self_improvement import SelfImprover, judge, learned, make_experience, sample_traces
from .supervised import replay_nll_updates


@dataclass(frozen=True)
class ExpertIterationConfig:
    """The ``improve.*`` keys expert iteration reads (their meaning: ``ImproveConfig``)."""

    problems_per_iter: int
    updates_per_iter: int
    samples: int
    temperature: float
    label_source: str
    replay_size: int
    train_batch: int


@register_method
class ExpertIteration(SelfImprover):
    name = "expert_iteration"
    Config = ExpertIterationConfig
    reads: ClassVar[tuple[str, ...]] = (*SelfImprover.reads, *improve_keys(ExpertIterationConfig))

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.votes = self.cfg.label_source == "majority_vote"
        self.replay = Replay(self.cfg.replay_size)  # traces judged correct, most recent last

    def collect(self, problems: Prompts) -> Experience:
        c = self.cfg
        ro = sample_traces(self, problems, c.samples, c.temperature)
        labels, scores, reward_flops = judge(self, ro, problems, vote=self.votes, source=c.label_source)
        good = ro.finished & (scores >= 0.5)
        # under a vote the labels are agreement with the majority, not correctness
        label_tag = tags.TRAIN_VOTE_AGREEMENT if self.votes else tags.TRAIN_SAMPLE_ACCURACY
        scalars = {
            label_tag: float(np.mean(labels)),
            tags.TRAIN_KEPT_FRACTION: len(set(ro.rows[good].tolist())) / len(problems.prompts),
        }
        return make_experience(
            self,
            problems,
            ro.rows,
            ro.completions,
            ro.finished,
            labels,
            scores,
            {tags.GENERATE: ro.flops, tags.REWARD: reward_flops},
            scalars=scalars,
        )

    def learn(self, experience: Experience) -> StepResult:
        """Every distinct finished trace judged correct joins the replay (ReST's growing set,
        so each update sees a full batch); the reward net learns the batch's labels; then
        ``improve.updates_per_iter`` maximum-likelihood steps on draws from the replay."""
        prompts, seen, kept = experience.prompt_of, set(), []
        for i in np.flatnonzero(experience.accepted):
            if (prompts[i], experience.completions[i]) not in seen:
                seen.add((prompts[i], experience.completions[i]))
                kept.append(Trace(prompts[i], experience.completions[i]))
        self.replay.add(kept)
        reward = self.reward_trainer.update(experience, self.learn_rng)
        return learned(experience, replay_nll_updates(self), {}, reward)
