"""Data parallelism for ``Trainer.step``: N replicas of one learner, each a process in a
``torch.distributed`` group (gloo on CPU, NCCL on CUDA), as verl's and OpenRLHF's
learner groups are.

Every replica holds the whole method (its replay, its random streams, its optimiser) and
is handed every batch, so every decision a method makes outside its losses (what to
replay, whether to step) is the same on every replica without a message. What is split is
the work: each ``Trainer.step`` gives replica r the r-th contiguous slice of the update's
rows, the replicas sum their gradients (one all-reduce), and each takes the same clipped
AdamW step, so their parameters stay equal.

Why the sum of the replicas' gradients is the one-process gradient: every loss is a mean
written with ``masked_mean``, whose denominator is summed over the replicas inside a
step. Replica r's loss is then (its rows' numerator) / (the whole batch's denominator),
and the replicas' losses add up to the whole batch's loss, term by term; so do their
gradients. A loss that divided by its own slice's count would weigh a short slice like a
long one.

One process (the local runtime, a trace worker, a one-learner Ray run) never joins a
group: ``current()`` is None, and ``Trainer.step`` runs the whole batch as it always did.
"""

from __future__ import annotations

import contextlib
import datetime
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Replica:
    rank: int
    world: int

    def rows(self, n: int) -> slice:
        """This replica's contiguous share of ``n`` rows (balanced; empty when n < world)."""
        base, extra = divmod(n, self.world)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (self.rank < extra))


_replica: Optional[Replica] = None
_in_step = False  # inside a data-parallel Trainer.step: masked_mean sums its denominator
_eager_sum = None  # _sum_over_replicas, kept out of torch.compile's graphs


def current() -> Optional[Replica]:
    """This process's place in its learner group, or None (one process)."""
    return _replica


def join(rank: int, world: int, address: str, backend: str, timeout_s: float = 1800.0) -> Replica:
    """Join the group of ``world`` learner replicas rendezvousing at ``address``
    (``tcp://host:port``, the rank-0 replica's). Blocks until all have joined."""
    global _replica
    dist.init_process_group(
        backend, init_method=address, rank=rank, world_size=world, timeout=datetime.timedelta(seconds=timeout_s)
    )
    _replica = Replica(rank, world)
    global _eager_sum
    if _eager_sum is None:  # here, not at import: torch.compiler imports the compiler stack (a second)
        _eager_sum = torch.compiler.disable(_sum_over_replicas)  # a collective runs eagerly in a compiled loss
    return _replica


def leave() -> None:
    global _replica
    if dist.is_initialized():
        dist.destroy_process_group()
    _replica = None


@contextlib.contextmanager
def step_scope() -> Iterator[None]:
    global _in_step
    _in_step = True
    try:
        yield
    finally:
        _in_step = False


def _sum_over_replicas(x: torch.Tensor) -> torch.Tensor:
    x = x.detach().clone()
    dist.all_reduce(x)
    return x


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(values * mask).sum() / mask.sum()`` (0 where the mask is empty) over the whole
    update's rows: inside a data-parallel step the denominator is every replica's."""
    total = mask.sum()
    if _in_step and _replica is not None:
        total = _eager_sum(total)
    return (values * mask).sum() / total.clamp(min=1)


def shard(data: Any, rows: slice) -> Any:
    """``data`` (a tensor with rows first, a NamedTuple of them, or None) cut to ``rows``."""
    if data is None:
        return None
    if isinstance(data, torch.Tensor):
        return data[rows]
    if isinstance(data, tuple) and hasattr(data, "_fields"):
        return type(data)(*(shard(x, rows) for x in data))
    raise TypeError(f"cannot split {type(data).__name__} by rows")


def all_reduce_grads(params: list[torch.nn.Parameter]) -> None:
    """Sum every parameter's gradient over the replicas, in one flat all-reduce (a replica
    whose slice was empty, or that did not reach a parameter, adds zeros)."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p)
        offset += n


def gather_rows(part: torch.Tensor, rows: slice, n: int) -> torch.Tensor:
    """The [n, ...] tensor whose ``rows`` are this replica's ``part``, from every replica's."""
    full = torch.zeros((n, *part.shape[1:]), dtype=torch.float32, device=part.device)
    full[rows] = part.float()
    dist.all_reduce(full)
    return full.to(part.dtype)


def sum_scalar(x: torch.Tensor) -> torch.Tensor:
    """A 0-d partial sum (a slice's share of a mean) summed over the replicas."""
    x = x.detach().float().clone()
    dist.all_reduce(x)
    return x


def broadcast_module(module: torch.nn.Module) -> None:
    """Every replica takes rank 0's parameters and buffers (as DDP does when it starts)."""
    for t in [*module.parameters(), *module.buffers()]:
        dist.broadcast(t.data, src=0)


def broadcast_flag(value: bool, device: torch.device) -> bool:
    """Rank 0's ``value`` on every replica."""
    t = torch.tensor([1 if value else 0], device=device)
    dist.broadcast(t, src=0)
    return bool(t.item())
