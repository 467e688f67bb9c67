"""Supervised maximum likelihood on prompt -> gold trace (or gold answer only)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .data import TokenBatch
from .learner import Learner, autocast
from .model import TransformerLM


def completion_nll(model: TransformerLM, batch: TokenBatch, *, exact: bool = False):
    """Mean negative log-likelihood of the completion tokens (prompt and padding masked out).

    ``exact``: also return [B] bool, teacher-forced exact match (every completion token,
    EOS included, is the argmax): the training accuracy a curriculum reads."""
    logits = model(batch.inputs)  # [B, T, V]
    nll = F.cross_entropy(logits.float().flatten(0, 1), batch.targets.flatten(), reduction="none")
    loss = (nll * batch.loss_mask.flatten()).sum() / batch.loss_mask.sum().clamp(min=1)
    if not exact:
        return loss
    hit = (logits.argmax(-1) == batch.targets) | (batch.loss_mask == 0)  # [B, T]
    return loss, hit.all(1)


class SupervisedLearner(Learner):
    """One update = one AdamW step on the completion NLL of a batch of gold traces."""

    def __init__(self, model: TransformerLM, cfg, total_steps: int, device: torch.device, *,
                 compile: bool = False, mixed_precision: bool | None = None):
        super().__init__(model, cfg, total_steps, device, mixed_precision=mixed_precision)
        self.loss_fn = torch.compile(completion_nll) if compile else completion_nll

    def update(self, batch: TokenBatch, *, exact: bool = False) -> dict:
        """One step; ``loss`` and ``grad_norm`` are 0-d tensors (no GPU sync per step).
        ``exact``: also ``exact`` [B], each row's teacher-forced exact match (on device)."""
        self.model.train()
        batch = batch.to(self.device)
        with autocast(self.device, self.mixed_precision):
            out = self.loss_fn(self.model, batch, exact=exact)
        loss, hit = out if exact else (out, None)
        metrics = self.apply(loss)
        if hit is not None:
            metrics["exact"] = hit
        B, T = batch.inputs.shape
        metrics.update(
            loss=loss.detach(),
            tokens=B * T,
            flops=self.model.flops_per_token(T, backward=True) * B * T,
        )
        return metrics
