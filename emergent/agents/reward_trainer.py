"""Training the reward-and-objective network: BCE on the outcomes of the policy's own traces.

``RewardTrainer`` holds the network's optimiser and a replay of labelled traces. Each
``learn`` adds a batch's traces (except those held out for diagnostics, and with the
``reward.rollouts`` traces sampled for it alone) and takes
``reward.updates_per_iter`` steps on draws from the replay. ``score`` reads P(correct) of
finished traces or of prompt states, for ranking, rewards, baselines and diagnostics.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from emergent import tags
from emergent.envs import TOKENIZER
from emergent.envs.tokenizer import ANSWER_SEP, STEP_SEP

from .model import upcast
from .records import Experience, Replay, Trace
from .reward_net import RewardNet, RewardNetConfig, ValueBatch, value_loss
from .token_batch import encode_batch
from .trainer import OptimConfig, Trainer, autocast


def step_ends(completion: str) -> list[int]:
    """Where each scratchpad step ends in ``completion``: the index of its separator (the
    ',' after it, the last step's '>'), one per ``scratchpad_steps(completion)``."""
    if ANSWER_SEP not in completion:
        return []
    head = completion.rsplit(ANSWER_SEP, 1)[0]
    return [i for i, ch in enumerate(head) if ch == STEP_SEP] + [len(head)]


def encode_values(
    prompts: Sequence[str],
    completions: Sequence[str],
    labels: np.ndarray,
    max_len: int,
    steps: Optional[Sequence[Optional[Sequence[bool]]]] = None,
    values: Optional[Sequence[bool]] = None,
) -> ValueBatch:
    """Rows ``BOS prompt completion EOS``, right-padded; train every state from the last
    prompt token (index len(prompt)) to the EOS (index len(prompt) + len(completion) + 1).
    ``steps`` (per trace, its steps' labels or None): the step head's targets, each at its
    step's separator (completion index i sits at row index 1 + len(prompt) + i). ``values``
    (per trace): False for a step drill, whose row trains the step head alone."""
    b = encode_batch(TOKENIZER, prompts, completions, max_len)
    # BOS + the shifted targets = the whole row. A trace that filled the context never
    # wrote EOS: its final state is its last token, so the appended EOS is cut off.
    full = torch.cat([b.inputs[:, :1], b.targets], 1)[:, :max_len]
    lp = torch.tensor([len(p) for p in prompts])
    eos_at = (lp + torch.tensor([len(c) for c in completions]) + 1).clamp(max=max_len - 1)
    t = torch.arange(full.shape[1])[None, :]
    mask = ((t >= lp[:, None]) & (t <= eos_at[:, None])).float()
    if values is not None:
        mask = mask * torch.tensor(values, dtype=torch.float32)[:, None]
    step_mask, step_labels = torch.zeros_like(mask), torch.zeros_like(mask)
    for row, (p, c, judged) in enumerate(zip(prompts, completions, steps or ())):
        if judged is None:
            continue
        at = [1 + len(p) + i for i in step_ends(c)]
        if len(at) != len(judged):
            raise ValueError(f"{len(judged)} step labels for a completion with {len(at)} steps: {c!r}")
        keep = [(a, y) for a, y in zip(at, judged) if a < full.shape[1]]  # steps cut off by max_len: none
        if keep:
            cols, ys = zip(*keep)
            step_mask[row, list(cols)] = 1.0
            step_labels[row, list(cols)] = torch.tensor(ys, dtype=torch.float32)
    return ValueBatch(full, mask, torch.as_tensor(labels, dtype=torch.float32), step_mask, step_labels)


def step_scores(p_true: np.ndarray, prompts: Sequence[str], completions: Sequence[str]) -> list[np.ndarray]:
    """The step head's P(true) ``p_true`` [R, T] read at each trace's steps: per row, [steps]
    (a step cut off by the context has none; a trace without steps, an empty array)."""
    T = p_true.shape[1]
    return [
        p_true[r, [a for a in (1 + len(p) + i for i in step_ends(c)) if a < T]]
        for r, (p, c) in enumerate(zip(prompts, completions))
    ]


def near_misses(completions: Sequence[str], k: int, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    """``k`` copies of each completion with one digit, drawn at random, replaced by another
    digit -> (the completion each copy comes from [C], the copies). A completion without
    digits has none. Host string work, as the verifier's."""
    src, out = [], []
    for i, c in enumerate(completions):
        digits = np.array([j for j, ch in enumerate(c) if ch in "0123456789"])
        if len(digits) == 0:
            continue
        at = digits[rng.integers(0, len(digits), k)]
        shift = rng.integers(1, 10, k)  # a different digit
        for j, d in zip(at.tolist(), shift.tolist()):
            src.append(i)
            out.append(c[:j] + str((int(c[j]) + d) % 10) + c[j + 1 :])
    return np.asarray(src, dtype=np.int64), out


def split_heldout(n: int, fraction: float, generator: np.random.Generator) -> np.ndarray:
    """Boolean mask [n]: True for traces held out of reward-net training."""
    return generator.random(n) < fraction


class RewardTrainer:
    """The reward net's optimiser (constant lr) and its replay of labelled traces."""

    def __init__(self, net: RewardNet, cfg: RewardNetConfig, total_steps: int, device: torch.device):
        optim = OptimConfig(lr=cfg.lr, min_lr=cfg.lr, warmup_steps=0, weight_decay=0.1)
        self.trainer = Trainer(net, optim, total_steps * cfg.updates_per_iter, device)
        self.net, self.cfg, self.device = net, cfg, device
        self.replay = Replay(cfg.replay_size)

    def update(self, experience: Experience, rng: np.random.Generator) -> tuple[float, dict[str, float]]:
        """Add the batch's traces that are not held out, then update from the replay.
        Returns (FLOPs, scalars)."""
        prompts = experience.prompt_of
        train = np.flatnonzero(~experience.heldout)
        if not len(self.replay) and len(train):
            self.calibrate(float(np.mean(experience.labels[train])))
        steps = experience.steps if experience.steps is not None else [None] * experience.size
        self.replay.add(
            Trace(prompts[i], experience.completions[i], float(experience.labels[i]), steps=steps[i]) for i in train
        )
        self.replay.add(experience.reward_traces)  # reward.rollouts, near misses, step drills
        flops, losses = 0.0, []
        for _ in range(self.cfg.updates_per_iter if len(self.replay) else 0):
            items = self.replay.sample(rng, self.cfg.batch_size)
            batch = encode_values(
                [t.prompt for t in items],
                [t.completion for t in items],
                np.array([t.label for t in items]),
                self.net.cfg.max_len,
                [t.steps for t in items] if self.net.step_head is not None else None,
                [t.value for t in items],
            ).to(self.device)
            u = self.trainer.step_batch(lambda b: value_loss(self.net, b, self.cfg.step_coef), batch)
            flops += u.flops
            losses.append(u.loss)
        return flops, ({tags.REWARD_LOSS: float(torch.stack(losses).mean())} if losses else {})

    @torch.no_grad()
    def calibrate(self, rate: float) -> None:
        """Start the head at the logit of the first batch's success rate (clipped to [0.02,
        0.98]): a net that has learned nothing then values every state at the base rate of
        the verdicts it stands in for, not at 0.5, which next to verdicts of ~0.2 would make
        a search prefer whatever it has not yet explored."""
        p = min(max(rate, 0.02), 0.98)
        self.net.head.bias.fill_(float(np.log(p / (1 - p))))

    @torch.no_grad()
    def score(self, prompts: Sequence[str], completions: Sequence[str], *, at_prompt: bool = False):
        """P(correct) of finished traces (or, ``at_prompt``, of the prompt states) -> ([R], flops)."""
        batch = encode_values(prompts, completions, np.zeros(len(prompts)), self.net.cfg.max_len).to(self.device)
        lp = torch.tensor([len(p) for p in prompts], device=self.device)
        lengths = lp + 1 if at_prompt else lp + batch.mask.sum(1).long()  # up to the prompt's end, or EOS
        self.net.eval()
        with autocast(self.device, self.trainer.mixed_precision):
            v = self.net.value_at(batch.inputs, lengths)
        B, T = batch.inputs.shape
        return upcast(v).cpu().numpy(), self.net.flops_per_token(T, backward=False) * B * T

    @torch.no_grad()
    def process_scores(self, prompts: Sequence[str], completions: Sequence[str]):
        """``score``'s P(correct) of finished traces and a process reward's score of them (that
        times the step head's P(true) of each step), from one forward -> ([R], [R], flops).
        Needs the step head."""
        batch = encode_values(prompts, completions, np.zeros(len(prompts)), self.net.cfg.max_len).to(self.device)
        eos = torch.tensor([len(p) for p in prompts], device=self.device) + batch.mask.sum(1).long() - 1
        self.net.eval()
        with autocast(self.device, self.trainer.mixed_precision):
            logits, step_logits = self.net.both(batch.inputs)
        values = torch.sigmoid(logits.gather(1, eos[:, None]).squeeze(1)).cpu().numpy()  # as value_at reads EOS
        p_true = torch.sigmoid(upcast(step_logits)).cpu().numpy()  # [R, T]
        process = values * np.array([s.prod() for s in step_scores(p_true, prompts, completions)], dtype=values.dtype)
        B, T = batch.inputs.shape
        return values, process, self.net.flops_per_token(T, backward=False) * B * T

    def state_dict(self) -> dict:
        return {"optim": self.trainer.state_dict(), "net": self.net.state_dict(), "replay": self.replay.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.trainer.load_state_dict(state["optim"])
        self.net.load_state_dict(state["net"])
        self.replay.load_state_dict(state["replay"])
