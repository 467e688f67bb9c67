"""Supervised maximum likelihood on prompt -> gold trace (or gold answer only)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .data import TokenBatch
from .learner import Learner, autocast
from .model import TransformerLM


def completion_nll(model: TransformerLM, batch: TokenBatch) -> torch.Tensor:
    """Mean negative log-likelihood of the completion tokens (prompt and padding masked out)."""
    logits = model(batch.inputs)  # [B, T, V]
    nll = F.cross_entropy(logits.float().flatten(0, 1), batch.targets.flatten(), reduction="none")
    return (nll * batch.loss_mask.flatten()).sum() / batch.loss_mask.sum().clamp(min=1)


class SupervisedLearner(Learner):
    """One update = one AdamW step on the completion NLL of a batch of gold traces."""

    def __init__(self, model: TransformerLM, cfg, total_steps: int, device: torch.device, *,
                 compile: bool = False, mixed_precision: bool | None = None):
        super().__init__(model, cfg, total_steps, device, mixed_precision=mixed_precision)
        self.loss_fn = torch.compile(completion_nll) if compile else completion_nll

    def update(self, batch: TokenBatch) -> dict:
        """One step; ``loss`` and ``grad_norm`` are 0-d tensors (no GPU sync per step)."""
        self.model.train()
        batch = batch.to(self.device)
        with autocast(self.device, self.mixed_precision):
            loss = self.loss_fn(self.model, batch)
        metrics = self.apply(loss)
        B, T = batch.inputs.shape
        metrics.update(
            loss=loss.detach(),
            tokens=B * T,
            flops=self.model.flops_per_token(T, backward=True) * B * T,
        )
        return metrics
