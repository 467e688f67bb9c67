"""Verifiable reasoning tasks, the shared tokenizer and Gymnasium token-level envs.

Importing this package registers every task and the ``emergent/<Task>-v0`` envs.
"""

from . import addition, countdown, multiplication, sorting
from .base import (
    SPLITS,
    TASKS,
    Problem,
    ProblemSpaceError,
    Score,
    Scores,
    SplitSpec,
    Task,
    extract_answer,
    make_task,
    register_task,
    score_strings,
)
from .gym_env import TraceEnv, register_envs
from .tokenizer import TOKENIZER, CharTokenizer

REGISTERED = (addition, countdown, multiplication, sorting)  # importing them registered them
ENV_IDS = register_envs()

__all__ = [
    "SPLITS",
    "TASKS",
    "ENV_IDS",
    "Problem",
    "ProblemSpaceError",
    "Score",
    "Scores",
    "SplitSpec",
    "Task",
    "TraceEnv",
    "TOKENIZER",
    "CharTokenizer",
    "extract_answer",
    "make_task",
    "register_task",
    "score_strings",
    "register_envs",
]
