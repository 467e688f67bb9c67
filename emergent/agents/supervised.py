"""Supervised maximum likelihood on gold demonstrations: the baseline every method is held to.

Its ``collect`` turns the batch's gold traces (or gold answers, ``train.target``) into
experience: one finished, correct trace per problem. Its ``learn`` is one AdamW step on
their completion NLL.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from emergent import tags
from emergent.envs import TOKENIZER

from .data_parallel import masked_mean
from .method import register_method
from .model import TransformerLM, upcast
from .records import Experience, Prompts, StepResult
from .sections import MethodConfig
from .token_batch import TokenBatch, encode_batch
from .trainer import Trainer, Update


def completion_nll(model: TransformerLM, batch: TokenBatch, *, exact: bool = False):
    """Mean negative log-likelihood of the completion tokens (prompt and padding masked out).

    ``exact``: also return [B] bool, teacher-forced exact match (every completion token,
    EOS included, is the argmax): the training accuracy a curriculum reads."""
    logits = model(batch.inputs)  # [B, T, V]
    nll = F.cross_entropy(upcast(logits).flatten(0, 1), batch.targets.flatten(), reduction="none")
    loss = masked_mean(nll, batch.loss_mask.flatten())
    if not exact:
        return loss
    hit = (logits.argmax(-1) == batch.targets) | (batch.loss_mask == 0)  # [B, T]
    return loss, hit.all(1)


def gold_experience(problems: Prompts) -> Experience:
    """The batch's gold traces (or answers) as experience: one finished, correct trace per
    problem, nothing held out, nothing spent."""
    P = len(problems.prompts)
    done = np.ones(P, dtype=bool)
    return Experience(
        list(problems.prompts),
        np.arange(P),
        list(problems.gold),
        finished=done,
        labels=done * 1.0,
        scores=done * 1.0,
        heldout=~done,
        heldout_probs=np.zeros(0),
        flops={},
    )


@register_method
class Supervised:
    name = "supervised"
    reads: ClassVar[tuple[str, ...]] = ("train.batch_size", "train.target", "train.compile")
    reward_net = None  # no reward-and-objective network, no trainer for one, no replay
    reward_trainer = None
    replay = None

    def __init__(self, policy: TransformerLM, cfg: MethodConfig, device: torch.device) -> None:
        self.policy, self.device = policy, device
        self.demonstrations = cfg.train.target  # "trace" | "answer"
        self.problems_per_step = cfg.train.batch_size
        self.trainer = Trainer(policy, cfg.optim, cfg.train.steps, device)
        self.loss_fn = torch.compile(completion_nll) if cfg.train.compile else completion_nll

    def networks(self) -> dict[str, torch.nn.Module]:
        return {}  # collect reads no weights

    def reseed(self, seed: int, stream: int = 0) -> None:
        """Nothing is drawn: the data stream is the platform's, and updates are deterministic."""

    def collect(self, problems: Prompts) -> Experience:
        return gold_experience(problems)

    def learn(self, experience: Experience) -> StepResult:
        """One step; the loss, grad norm and per-problem exact match stay on the device."""
        batch = encode_batch(TOKENIZER, experience.prompts, experience.completions, self.policy.cfg.max_len).to(
            self.device
        )
        u = self.trainer.step_batch(lambda b: self.loss_fn(self.policy, b, exact=True), batch)
        return StepResult(
            flops={tags.TRAIN: u.flops}, tokens=u.tokens, loss=u.loss, lr=u.lr, grad_norm=u.grad_norm, accuracy=u.aux
        )

    def state_dict(self) -> dict:
        return self.trainer.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.trainer.load_state_dict(state)


def replay_nll_updates(method: Any) -> list[Update]:
    """``improve.updates_per_iter`` maximum-likelihood steps on draws of accepted traces from
    ``method.replay`` (none while it is empty): how expert iteration, and alphazero with
    ``learn_from=solved``, learn."""
    updates = []
    for _ in range(method.cfg.updates_per_iter if len(method.replay) else 0):
        items = method.replay.sample(method.learn_rng, method.cfg.train_batch)
        batch = encode_batch(
            TOKENIZER, [t.prompt for t in items], [t.completion for t in items], method.policy.cfg.max_len
        ).to(method.device)
        updates.append(method.trainer.step_batch(lambda b: completion_nll(method.policy, b), batch))
    return updates
