"""The typed config a method is built from: ``build_method(MethodConfig, policy, device)``.

agents/ never sees the platform's whole ``Config``: the platform hands each method the
sections below (``platform/config.py: method_config`` builds them), and each self-improver
narrows ``improve.*`` to its own dataclass of only the keys it reads (``improve_view``); its
``reads`` (which config keys a run may set for it) come from those fields.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from .method import ImproveConfig
from .reward_net import RewardNetConfig
from .search import SearchConfig
from .trainer import OptimConfig

if TYPE_CHECKING:  # self_label.py imports this module (its methods are built from MethodConfig)
    from .self_label import SelfLabelConfig


@dataclass(frozen=True)
class TrainSection:
    """What a method reads of ``train.*``."""

    steps: int  # updates (supervised) or iterations (self-improvement): the schedules' length
    batch_size: int = 64  # supervised, self_label: problems per update
    target: str = "trace"  # supervised, self_label: the gold they learn, trace or answer
    compile: bool = False  # supervised: torch.compile the loss


@dataclass(frozen=True)
class TaskSection:
    """What a method reads of ``task.*`` (self_label draws its own prompts above the gold's
    lengths; the step checker's labels follow ``check_steps``)."""

    name: str
    format: Optional[str] = None
    heldout_fraction: float = 0.1
    check_steps: bool = False
    difficulty: tuple[int, int] = (1, 3)


@dataclass(frozen=True)
class MethodConfig:
    """Every section a method may read; each reads only its own (its ``reads``)."""

    method: str  # the registered method's name (``train.method``)
    seed: int
    train: TrainSection
    task: TaskSection
    optim: OptimConfig
    improve: ImproveConfig
    reward: RewardNetConfig
    search: SearchConfig
    self_label: "SelfLabelConfig"


def improve_view(cls: type, improve: ImproveConfig):
    """``cls`` (a method's frozen dataclass of the ``improve.*`` keys it reads) filled from the
    shared section."""
    return cls(**{f.name: getattr(improve, f.name) for f in dataclasses.fields(cls)})


def improve_keys(cls: type) -> tuple[str, ...]:
    """The config keys ``cls``'s fields are: ``improve.<field>`` each."""
    return tuple(f"improve.{f.name}" for f in dataclasses.fields(cls))
