"""Token-level Gymnasium environments: one episode writes one completion.

observation: {"tokens": int64 [max_len] (BOS + prompt + actions so far, PAD after),
              "length": number of valid tokens}
action:      the next token id, Discrete(vocab)
reward:      0 until the episode ends; then the verifier's score of the completion
             (``reward="exact"``: 1.0 if correct else 0.0; ``"token_accuracy"``: graded).
The episode terminates at EOS and truncates when the context is full; both are scored
through ``Task.verify_batch``, the same code path the batched generators use.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from .base import Problem, SplitSpec, make_task
from .tokenizer import TOKENIZER

REWARDS = ("exact", "token_accuracy")


class TraceEnv(gym.Env):
    metadata = {"render_modes": ["ansi"]}

    def __init__(
        self,
        task: str = "addition",
        split: str = "train",
        difficulty: tuple[int, int] = (1, 3),
        extrapolate: tuple[int, int] | None = None,
        max_len: int = 64,
        reward: str = "exact",
        render_mode: str | None = None,
        **task_kwargs: Any,
    ) -> None:
        if reward not in REWARDS:
            raise ValueError(f"unknown reward {reward!r}; choose one of {list(REWARDS)}")
        if render_mode not in (None, "ansi"):
            raise ValueError(f"unknown render_mode {render_mode!r}; choose None or 'ansi'")
        self.task = make_task(task, **task_kwargs)
        lo, hi = difficulty
        self.splits = SplitSpec(train=(lo, hi), extrapolate=tuple(extrapolate or (hi + 1, hi + 1)))
        self.splits.validate(self.task)
        self.split, self.reward_kind, self.max_len = split, reward, max_len
        self.render_mode = render_mode
        V = TOKENIZER.vocab_size
        self.observation_space = spaces.Dict(
            {
                "tokens": spaces.Box(low=0, high=V - 1, shape=(max_len,), dtype=np.int64),
                "length": spaces.Discrete(max_len + 1),
            }
        )
        self.action_space = spaces.Discrete(V)
        self._tokens = np.zeros(max_len, dtype=np.int64)
        self._length = 0
        self._prompt_len = 0
        self.problem: Problem | None = None

    def _obs(self) -> dict[str, Any]:
        return {"tokens": self._tokens.copy(), "length": self._length}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        difficulties = self.splits.difficulties(self.split)
        d = difficulties[int(self.np_random.integers(len(difficulties)))]
        self.problem = self.task.sample(self.np_random, 1, self.split, [d])[0]
        prompt = TOKENIZER.encode_prompts([self.problem.prompt])[0]
        if len(prompt) >= self.max_len:
            raise ValueError(f"prompt of {len(prompt)} tokens does not fit max_len={self.max_len}")
        self._tokens[:] = TOKENIZER.pad_id
        self._tokens[: len(prompt)] = prompt
        self._length = self._prompt_len = len(prompt)
        return self._obs(), {"prompt": self.problem.prompt, "difficulty": self.problem.difficulty}

    def completion(self) -> str:
        """The completion written so far, EOS excluded."""
        ids = self._tokens[self._prompt_len : self._length]
        if len(ids) and ids[-1] == TOKENIZER.eos_id:
            ids = ids[:-1]
        return TOKENIZER.decode(ids)

    def step(self, action):
        if self.problem is None:
            raise RuntimeError("call reset() before step()")
        if not self.action_space.contains(action):
            raise ValueError(f"invalid action {action!r}")
        self._tokens[self._length] = int(action)
        self._length += 1
        terminated = int(action) == TOKENIZER.eos_id
        truncated = not terminated and self._length >= self.max_len
        reward, info = 0.0, {}
        if terminated or truncated:
            score = self.task.verify(self.problem, self.completion())
            reward = float(score.exact) if self.reward_kind == "exact" else score.token_accuracy
            info = {"exact": score.exact, "token_accuracy": score.token_accuracy, "edit_distance": score.edit_distance}
        return self._obs(), reward, terminated, truncated, info

    def render(self):
        if self.render_mode == "ansi" and self.problem is not None:
            return self.problem.prompt + self.completion()
        return None


def register_envs() -> list[str]:
    """Register ``emergent/<Task>-v0`` for every task; idempotent."""
    from .base import TASKS

    ids = []
    for name in TASKS:
        env_id = f"emergent/{name.capitalize()}-v0"
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point=TraceEnv, kwargs={"task": name, **ENV_DEFAULTS.get(name, {})})
        ids.append(env_id)
    return ids


# Default difficulty ranges for the registered envs (override with gym.make(..., difficulty=...)).
ENV_DEFAULTS: dict[str, dict[str, Any]] = {
    "countdown": {"difficulty": (3, 4)},
}
