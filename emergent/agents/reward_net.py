"""The reward-and-objective network: P(final answer correct | prompt, prefix) per position.

Own weights, not a value head on the policy trunk. Three reasons:
  * it is the objective the policy is optimised against; sharing a trunk lets every
    policy update move the judge too, the easiest route to reward hacking;
  * its targets (verifier outcomes of the policy's own traces) are few and noisy next to
    the policy's dense token targets, so a shared trunk would let one loss drown the other;
  * it can be sized, trained and evaluated (AUC, calibration) on its own, and a scorer
    trained once can rank traces from any policy.
The cost is a second forward pass per scored batch, which the FLOP ledger counts.

Position t's output scores the prefix ending at token t: the value of the state a search
reaches after writing that token. The prompt's state is the last prompt token's output;
a finished trace's is the EOS token's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .data_parallel import masked_mean
from .model import ModelConfig, TransformerLM, upcast

REWARD_INITS = ("policy", "scratch")


@dataclass
class RewardNetConfig:
    """``reward.*``: the network's size and start, and how its trainer updates it."""

    # its context length and positional scheme are the policy's: it scores what the policy writes
    n_layer: Optional[int] = None  # None: the policy's
    n_head: Optional[int] = None
    d_model: Optional[int] = None
    # policy: start the trunk from the starting policy's weights (as RLHF reward models
    # start from the SFT model): its features already read the task's arithmetic, so the
    # judge needs few labelled traces. Needs the policy's size. scratch: random init.
    init: str = "policy"
    lr: float = 3e-4
    updates_per_iter: int = 2
    batch_size: int = 128  # labelled traces per update, drawn from the replay
    replay_size: int = 4096  # recent labelled traces kept for reward-net updates
    heldout_fraction: float = 0.2  # of each iteration's traces: scored, never trained on
    # sampled traces per problem, each iteration, that only the reward net learns from (as
    # AlphaGo's value network learned from its RL policy's games): one KV-cached generate
    # call, labelled like the method's own traces; far cheaper than a searched trace
    rollouts: int = 0
    # per trace of the method's own that the reward net trains on (not held out): copies with
    # one digit of the completion changed,
    # labelled by the verifier. Near misses differ from a real trace in one number (a step's
    # operand or result, the answer), so telling them apart takes checking the arithmetic, which
    # the policy's own traces alone teach slowly. Offline, on an expert-iteration policy's
    # countdown traces, 1 raised held-out AUC from 0.71 to 0.76 (three seeds); online, inside
    # expert iteration, it has not moved the AUC yet and dilutes the positives, which costs
    # calibration (benchmarks/RESULTS.md)
    near_misses: int = 0
    # a process reward: with a step checker, a second head learns each scratchpad step's own
    # label (true or false), read at the step's separator; the trunk the value head reads learns
    # to check arithmetic from every step, not only from one verdict per trace. None: on
    # exactly when task.check_steps (the verifier then judges steps anyway)
    step_labels: Optional[bool] = None
    step_coef: float = 1.0  # weight of the step head's loss beside the value loss
    # step drills per problem, each iteration, for the step head alone (needs step labels and a
    # task that writes drills, Task.drill_steps): scratchpads of well-formed steps over the
    # problem's numbers, each true or false at random, labelled by the step checker. A judge
    # learning only from its policy's traces sees the same few thousand steps again and again
    # and memorises them (offline, more updates on them lower its step AUC); fresh drills teach
    # the arithmetic a step's truth turns on. Online, 16 with 8 updates of 256 rows took the
    # process score on countdown past 0.85 after about 200 iterations (benchmarks/RESULTS.md).
    # Host string work; their training is in the reward ledger like any reward update
    step_drills: int = 0

    def model_config(self, policy: ModelConfig) -> ModelConfig:
        size = {
            k: getattr(self, k) if getattr(self, k) is not None else getattr(policy, k)
            for k in ("n_layer", "n_head", "d_model")
        }
        return ModelConfig(**size, max_len=policy.max_len, pos=policy.pos, place_offset=policy.place_offset)

    def validate(self, policy: ModelConfig) -> None:
        if self.init not in REWARD_INITS:
            raise ValueError(f"reward.init={self.init!r} is not valid; choose one of {list(REWARD_INITS)}")
        mine = self.model_config(policy)
        if self.init == "policy" and (mine.n_layer, mine.n_head, mine.d_model) != (
            policy.n_layer,
            policy.n_head,
            policy.d_model,
        ):
            raise ValueError(
                "reward.init=policy needs the policy's size: leave reward.n_layer / n_head / d_model "
                "unset (null), or set reward.init=scratch"
            )
        if (
            min(self.updates_per_iter, self.rollouts, self.near_misses, self.step_drills) < 0
            or self.batch_size < 1
            or self.replay_size < 1
        ):
            raise ValueError(
                "reward.updates_per_iter, reward.rollouts, reward.near_misses and reward.step_drills must be >= 0, "
                "reward.batch_size and "
                "reward.replay_size >= 1"
            )
        if self.step_coef < 0:
            raise ValueError("reward.step_coef must be >= 0")
        if not 0.0 <= self.heldout_fraction < 1.0:
            raise ValueError("reward.heldout_fraction must lie in [0, 1)")
        mine.validate()


class ValueBatch(NamedTuple):
    inputs: torch.Tensor  # [B, T] BOS + prompt + completion + EOS, right-padded
    mask: torch.Tensor  # [B, T] float: 1 at the states to train (last prompt token .. EOS); 0 in a drill
    labels: torch.Tensor  # [B] float: 1 if the verifier accepted the trace, else 0
    step_mask: torch.Tensor  # [B, T] float: 1 at each judged step's separator (',' or '>')
    step_labels: torch.Tensor  # [B, T] float: that step's label (1 true, 0 false)

    def to(self, device) -> "ValueBatch":
        return ValueBatch(*(t.to(device, non_blocking=True) for t in self))


class RewardNet(nn.Module):
    @classmethod
    def for_policy(cls, policy: TransformerLM, cfg: RewardNetConfig, *, step_head: bool = False) -> "RewardNet":
        """Sized by ``reward.*`` (the policy's size by default); with ``reward.init=policy``
        the trunk starts from the policy's weights. ``step_head``: a process head too."""
        net = cls(cfg.model_config(policy.cfg), policy.vocab_size, step_head=step_head)
        net = net.to(next(policy.parameters()).device)
        if cfg.init == "policy":  # the judge starts from what the starting policy knows
            net.trunk.load_state_dict(policy.state_dict())
        return net

    def __init__(self, cfg: ModelConfig, vocab_size: int, *, step_head: bool = False) -> None:
        super().__init__()
        self.trunk = TransformerLM(cfg, vocab_size)  # its tied LM head adds no parameters and is unused
        self.head = nn.Linear(cfg.d_model, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)  # starts at P = 0.5 everywhere: no opinion
        # P(the step ending here is true), read at step separators only; trained, never searched with
        self.step_head = nn.Linear(cfg.d_model, 1) if step_head else None
        if self.step_head is not None:
            nn.init.zeros_(self.step_head.weight)
            nn.init.zeros_(self.step_head.bias)

    @property
    def cfg(self) -> ModelConfig:
        return self.trunk.cfg

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """idx [B, T] (right-padded) -> logits [B, T] of P(correct | tokens[:t+1])."""
        return upcast(self.head(self.trunk.hidden(idx)).squeeze(-1))

    def both(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """idx [B, T] -> (value logits [B, T], step logits [B, T]: P(the step ending at t is
        true)); needs the step head."""
        h = self.trunk.hidden(idx)  # [B, T, C]
        return upcast(self.head(h).squeeze(-1)), upcast(self.step_head(h).squeeze(-1))

    def value_at(self, idx: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """P(correct) of each row's state after its last real token: idx [B, T], lengths [B] -> [B]."""
        logits = self(idx)
        return torch.sigmoid(logits.gather(1, (lengths - 1).clamp(min=0)[:, None]).squeeze(1))

    def flops_per_token(self, context: int, *, backward: bool) -> float:
        c = self.cfg
        per = self.trunk.flops_per_token(context, backward=backward)
        lm_head = 2 * c.d_model * self.trunk.vocab_size * (3 if backward else 1)
        head = 2 * c.d_model * (3 if backward else 1) * (2 if self.step_head is not None else 1)
        return per - lm_head + head  # the value (and step) head replace the LM head


def value_loss(net: RewardNet, batch: ValueBatch, step_coef: float = 1.0) -> torch.Tensor:
    """Binary cross-entropy of every trained prefix against its trace's outcome; with a step
    head, plus ``step_coef`` x the step head's at every judged step against the step's label."""
    if net.step_head is None:
        logits = net(batch.inputs)  # [B, T]
    else:
        logits, step_logits = net.both(batch.inputs)
    target = batch.labels[:, None].expand_as(logits)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    loss = masked_mean(bce, batch.mask)
    if net.step_head is not None:  # an empty step mask adds 0 (no host sync to ask)
        step_bce = F.binary_cross_entropy_with_logits(step_logits, batch.step_labels, reduction="none")
        loss = loss + step_coef * masked_mean(step_bce, batch.step_mask)
    return loss
