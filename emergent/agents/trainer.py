"""A network's ``Trainer``: AdamW, the warmup + cosine schedule, clipping, bf16 autocast.

Every update of every network (policy or reward net, any method) is one ``Trainer.step``:
train mode, autocast, the loss, backward, clip, AdamW. So all methods spend compute the
same way and report it the same way (an ``Update``), and all of them run data-parallel
the same way (agents/data_parallel.py): a step's ``data`` is what is split by rows.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import torch
import torch.nn as nn

from . import data_parallel


@dataclass
class OptimConfig:
    # the defaults are the quickstart's (configs/quickstart.yaml says why these values)
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 50
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping

    def validate(self) -> None:
        if not (self.lr > 0 and 0 <= self.min_lr <= self.lr):
            raise ValueError(
                f"optim.lr must be > 0 and optim.min_lr in [0, lr]; got lr={self.lr}, min_lr={self.min_lr}"
            )
        if self.warmup_steps < 0 or self.grad_clip < 0 or self.weight_decay < 0:
            raise ValueError("optim.warmup_steps, optim.grad_clip and optim.weight_decay must be >= 0")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ValueError("optim.beta1 and optim.beta2 must lie in [0, 1)")


def lr_at(step: int, total_steps: int, cfg: OptimConfig) -> float:
    """Linear warmup to ``lr`` then cosine decay to ``min_lr`` at ``total_steps``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * progress))


def make_optimizer(model: nn.Module, cfg: OptimConfig, fused: bool) -> torch.optim.AdamW:
    # Decay matrices only (not norms, not biases): the usual GPT recipe.
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=fused)


def autocast(device: torch.device, enabled: bool = True):
    """bf16 autocast on CUDA; full precision elsewhere (CPU bf16 is slower and less exact)."""
    if device.type == "cuda" and enabled:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class Update(NamedTuple):
    loss: torch.Tensor  # 0-d, detached, on device
    lr: float
    grad_norm: torch.Tensor  # 0-d, on device (reading it would sync a GPU)
    tokens: int
    flops: float  # what this update cost (forward + backward)
    aux: Any = None  # whatever else the loss function returned (e.g. per-row exact match)


class Trainer:
    """Owns the optimiser of one model and applies one clipped, scheduled AdamW step.

    ``mixed_precision`` (default: on for CUDA) turns on bf16 autocast and fused AdamW
    together; off gives the fp32 reference the benchmarks compare against.
    """

    def __init__(
        self,
        model: nn.Module,
        cfg: OptimConfig,
        total_steps: int,
        device: torch.device,
        *,
        mixed_precision: bool | None = None,
    ) -> None:
        cfg.validate()
        self.model, self.cfg, self.total_steps, self.device = model, cfg, total_steps, device
        self.mixed_precision = device.type == "cuda" if mixed_precision is None else mixed_precision
        self._optimizer: torch.optim.AdamW | None = None
        self.step_count = 0

    @property
    def optimizer(self) -> torch.optim.AdamW:
        """Made on first use: a trace worker holds a method's trainers but never steps them,
        and torch's first optimiser imports its compiler stack (about a second per process)."""
        if self._optimizer is None:
            fused = self.mixed_precision and self.device.type == "cuda"
            self._optimizer = make_optimizer(self.model, self.cfg, fused=fused)
        return self._optimizer

    def step(self, loss_fn: Callable[..., Any], *data: Any, tokens: int, flops: float) -> Update:
        """One update: ``loss_fn(*data)`` (a 0-d loss, or ``(loss, aux)``) under autocast in
        train mode, then backward, clip, AdamW.

        ``data``: tensors (or NamedTuples of them, or None) whose first dimension is the
        update's rows. In a data-parallel learner group each replica's ``loss_fn`` sees its
        slice of the rows, takes its means with ``data_parallel.masked_mean``, and the
        replicas' gradients are summed before the clip: the update, its loss and its aux
        are the whole batch's (an aux of one value per row is gathered; a 0-d aux, a
        slice's share of a mean, is summed). ``tokens`` and ``flops`` are the whole
        update's, counted once."""
        self.model.train()
        replica = data_parallel.current()
        if replica is None:
            with autocast(self.device, self.mixed_precision):
                out = loss_fn(*data)
            loss, aux = out if isinstance(out, tuple) else (out, None)
            m = self.apply(loss)
            return Update(loss.detach(), m["lr"], m["grad_norm"], tokens, flops, aux)
        n = _rows(data)
        rows = replica.rows(n)
        with autocast(self.device, self.mixed_precision), data_parallel.step_scope():
            out = loss_fn(*(data_parallel.shard(d, rows) for d in data))
        loss, aux = out if isinstance(out, tuple) else (out, None)
        m = self.apply(loss, all_reduce=True)
        if isinstance(aux, torch.Tensor):
            aux = data_parallel.sum_scalar(aux) if aux.dim() == 0 else data_parallel.gather_rows(aux.detach(), rows, n)
        return Update(data_parallel.sum_scalar(loss), m["lr"], m["grad_norm"], tokens, flops, aux)

    def step_batch(self, loss_fn: Callable[..., Any], batch: Any, *data: Any) -> Update:
        """``step`` on a batch of token rows (``batch.inputs`` [B, T]; ``data``: more per-row
        tensors for ``loss_fn(batch, *data)``): its tokens are B x T and its FLOPs a forward and
        a backward of this learner's model over them. Every method's update goes through here."""
        B, T = batch.inputs.shape
        flops = self.model.flops_per_token(T, backward=True) * B * T
        return self.step(loss_fn, batch, *data, tokens=B * T, flops=flops)

    def apply(self, loss: torch.Tensor, *, all_reduce: bool = False) -> dict:
        """Backward, (``all_reduce``: sum the gradients over the learner group,) clip, step.
        ``grad_norm`` stays a tensor: reading it would sync the GPU."""
        lr = lr_at(self.step_count, self.total_steps, self.cfg)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if all_reduce:
            data_parallel.all_reduce_grads([p for p in self.model.parameters() if p.requires_grad])
        clip = self.cfg.grad_clip if self.cfg.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        self.optimizer.step()
        self.step_count += 1
        return {"lr": lr, "grad_norm": grad_norm.detach()}

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "step": self.step_count}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.step_count = int(state["step"])


def _rows(data: tuple) -> int:
    for d in data:
        if isinstance(d, torch.Tensor):
            return d.shape[0]
        if isinstance(d, tuple) and d and isinstance(d[0], torch.Tensor):
            return d[0].shape[0]
    raise ValueError("a data-parallel Trainer.step needs its data (tensors with rows first) to split")
