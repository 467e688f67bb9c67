"""``Experiment``: a run assembled from its config, with no runtime logic in it.

It holds the task, the policy, the method (any of them, through the ``Method`` interface),
the problem stream, the evaluator and the FLOP ledger, and checkpoints and restores all
of it. One step is ``consume(collect(problems))``: the local runtime calls both in turn,
the Ray runtime calls ``collect`` on trace workers and ``consume`` on the learner.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from emergent import tags
from emergent.agents import Method, build_method
from emergent.agents.model import TransformerLM
from emergent.agents.records import Experience, Prompts, StepResult
from emergent.envs import TOKENIZER, Problem, ProblemSpaceError, Task

from .checkpoint import LAST, load_checkpoint, load_model_state
from .config import Config, ConfigError, build_task, flatten, load_config, method_config, to_yaml
from .evaluate import Evaluator, SplitResult
from .ledger import FlopLedger
from .problem_stream import ProblemStream

# Keys that may differ between a run and its resumption.
RESUMABLE_CHANGES = {
    "resume",
    "progress",
    "device",
    "train.steps",
    "train.time_limit_s",
    "train.flop_budget",
    "eval.every",
    "checkpoint_every",
    "train.log_every",
    "ray.learners",
}  # a learner group computes what one learner computes


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda' but CUDA is not available; use device=cpu or device=auto")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def config_diff(a: Config, b: Config) -> list[str]:
    fa = flatten(OmegaConf.to_container(OmegaConf.structured(a)))
    fb = flatten(OmegaConf.to_container(OmegaConf.structured(b)))
    return sorted(k for k in fa.keys() | fb.keys() if fa.get(k) != fb.get(k) and k not in RESUMABLE_CHANGES)


class Oracle:
    """The verifier of one batch of training problems: exact correctness (0/1) of
    completions, rows indexing the problems. All a self-improver learns of their answers."""

    def __init__(self, task: Task, problems: list[Problem]) -> None:
        self._task, self._problems = task, problems

    def __call__(self, rows: np.ndarray, completions) -> np.ndarray:
        return self._task.verdicts([self._problems[r] for r in rows], completions).astype(np.float64)

    def steps(self, rows: np.ndarray, completions) -> list[np.ndarray]:
        """Each completion's scratchpad steps judged one by one ([steps] bool each)."""
        return self._task.step_labels([self._problems[r] for r in rows], completions)

    def drills(self, rows: np.ndarray, rng: np.random.Generator) -> list[str]:
        """One step drill (``Task.drill_steps``) for each row's problem; labelled by ``steps``."""
        return [self._task.drill_steps(self._problems[r], rng) for r in rows]


@dataclass(frozen=True)
class Collected:
    """A method's experience and what the platform attaches to it: the difficulties of its
    problems (for the curriculum; a method never reads them) and the weights version that
    wrote it (the Ray runtime's staleness)."""

    experience: Experience
    difficulties: np.ndarray  # [P]
    version: int = 0


@dataclass(frozen=True)
class Consumed:
    """One consumed step: the method's result and every scalar it reported, by tag."""

    result: StepResult
    scalars: dict[str, float]
    traces: int  # traces consumed


class Experiment:
    """Everything one run is made of. Runtimes drive it; it holds no runtime logic.

    ``worker=True`` (a trace worker): no problem stream, no evaluator, and no warm start
    from disk (its weights come from the learner)."""

    def __init__(self, cfg: Config, *, worker: bool = False) -> None:
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        self.task = build_task(cfg)
        self.model = TransformerLM(cfg.model, TOKENIZER.vocab_size).to(self.device)
        warm = None
        if cfg.improve.init_from and not worker:  # before the method: a KL reference copies the start
            warm = load_checkpoint(cfg.improve.init_from)
            load_model_state(self.model, warm, cfg.improve.init_from)
        self.method: Method = build_method(method_config(cfg), self.model, self.device)
        self.ledger = FlopLedger()
        if warm is not None:  # compute counts from random initialisation: the warm start's is part of it
            self.ledger.add(tags.WARM_START, sum(float(v) for v in warm["ledger"].values()))
        self.step = 0
        self.elapsed_s = 0.0  # wall clock of the run at its last checkpoint (Run keeps the live one)
        if worker:
            return
        self._in_flight: dict[int, dict] = {}  # batch id -> the stream's draw state before it (Ray)
        try:  # the draws of the data and of the evaluation sets, before any work
            self._build_data(cfg)
        except ProblemSpaceError as e:
            raise ConfigError(str(e)) from None

    def _build_data(self, cfg: Config) -> None:
        """The training stream and the evaluator's fixed problem sets."""
        self.data = ProblemStream(
            self.task,
            cfg.splits,
            seed=cfg.seed,
            train_size=cfg.task.train_size,
            data_seed=cfg.task.data_seed,
            curriculum=cfg.train.curriculum,
            window=cfg.train.curriculum_window,
        )
        self.evaluator = Evaluator(
            self.task,
            cfg.splits,
            problems_per_split=cfg.eval.problems,
            seed=cfg.eval.seed,
            split_names=cfg.eval.splits,
            batch_size=cfg.eval.batch_size,
            samples=cfg.eval.samples,
            train_set=self.data.fixed,
            decode=cfg.eval.decode,
            search_cfg=cfg.search,
            pass_k=cfg.eval.pass_k,
            pass_samples=cfg.eval.pass_samples,
            temperature=cfg.eval.temperature,
        )
        self._check_context()

    # -- what a method is shown of a problem ---------------------------------------------------
    def _gold(self, p: Problem) -> str:
        return p.trace if self.method.demonstrations == "trace" else p.answer

    def _length(self, p: Problem) -> int:
        """Tokens a training example takes: BOS, prompt, and the gold a method learns from
        and EOS, or room for one token of its own."""
        return len(p.prompt) + (len(self._gold(p)) + 2 if self.method.demonstrations else 2)

    def _fits(self, p: Problem) -> bool:
        return self._length(p) <= self.cfg.model.max_len

    def _check_context(self) -> None:
        """Fail before training if a training example cannot fit the context: every example
        of a fixed set, or 64 draws at the top difficulty."""
        examples = self.data.fixed or self.task.sample(
            np.random.default_rng(0), 64, "train", [self.cfg.task.difficulty[1]]
        )
        longest = max(examples, key=self._length)
        need = self._length(longest)
        if need > self.cfg.model.max_len:
            shown = longest.prompt + (self._gold(longest) if self.method.demonstrations else "")
            raise ConfigError(
                f"model.max_len={self.cfg.model.max_len} is too short for "
                f"task.difficulty={self.cfg.task.difficulty}: {shown!r} needs {need} tokens"
            )

    # -- one step ----------------------------------------------------------------------------------
    def next_problems(self, batch: int | None = None) -> list[Problem]:
        """The next batch of training problems. An unlimited stream can, rarely, draw one
        longer than every draw the startup check saw: it is skipped (and counted), not a
        crash mid-run.

        ``batch``: its id, when problems are handed out ahead of learning (Ray). Until that
        batch (or a later one) is settled, a checkpoint records the stream as it was before
        the draw, so a resumed run draws the same problems again rather than skipping
        those that were in flight when the run was killed."""
        if batch is not None:
            self._in_flight[batch] = self.data.draw_state()
        return self.data.next(self.method.problems_per_step, fits=self._fits)

    def settle(self, batch: int) -> None:
        """Batch ``batch`` was learned from (or dropped): it and every batch drawn before it
        are no longer in flight."""
        for b in [b for b in self._in_flight if b <= batch]:
            del self._in_flight[b]

    def collect(self, problems: list[Problem], version: int = 0) -> Collected:
        """The method's experience of ``problems`` with the current weights. It sees their
        prompts and the verifier, and their gold only if it learns from demonstrations."""
        gold = [self._gold(p) for p in problems] if self.method.demonstrations else None
        oracle = Oracle(self.task, problems)
        batch = Prompts(
            [p.prompt for p in problems],
            oracle,
            gold,
            oracle.steps if self.task.has_step_checker else None,
            oracle.drills if self.task.has_step_drills else None,
        )
        return Collected(self.method.collect(batch), np.array([p.difficulty for p in problems]), version)

    def consume(self, collected: Collected) -> Consumed:
        """Learn from one batch; the ledger counts what collecting and learning it cost (and
        nothing for experience never consumed)."""
        experience = collected.experience
        result = self.method.learn(experience)
        for part, flops in [*experience.flops.items(), *result.flops.items()]:
            self.ledger.add(part, flops)
        scalars = {**experience.scalars, **result.scalars}
        if self.cfg.train.curriculum is not None:  # the one host sync per step a curriculum costs
            scalars[tags.TRAIN_CURRICULUM] = float(self.data.top)  # what this batch drew from (Ray: the next)
            accuracy = result.accuracy
            accuracy = accuracy.cpu().numpy() if isinstance(accuracy, torch.Tensor) else accuracy
            self.data.report(collected.difficulties, accuracy)
        self.step += 1
        return Consumed(result, scalars, experience.size)

    def train_step(self) -> Consumed:
        return self.consume(self.collect(self.next_problems()))

    def evaluate(self) -> dict[str, SplitResult]:
        return self.evaluator.run(self.model, self.device, self.method.reward_net)

    # -- checkpoints --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "elapsed_s": self.elapsed_s,
            "method": self.cfg.train.method,
            "model": self.model.state_dict(),
            "learner": self.method.state_dict(),
            # problems drawn for batches still in flight are drawn again on resume
            "data": {**self.data.state_dict(), **(self._in_flight[min(self._in_flight)] if self._in_flight else {})},
            "ledger": self.ledger.state_dict(),
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "python": list(random.getstate()[1]),
            },
            "config": to_yaml(self.cfg),
        }

    def load_state_dict(self, state: dict[str, Any], path) -> None:
        load_model_state(self.model, state, path)
        self.method.load_state_dict(state["learner"])
        self.data.load_state_dict(state["data"])
        self.ledger.load_state_dict(state["ledger"])
        torch.set_rng_state(state["rng"]["torch"])
        if state["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        random.setstate((3, tuple(state["rng"]["python"]), None))
        self.step = int(state["step"])
        self.elapsed_s = float(state.get("elapsed_s", 0.0))

    def try_resume(self) -> bool:
        """Restore the run from ``<run_dir>/last.pt`` if it exists; False when starting fresh."""
        path = self.cfg.run_dir / LAST
        if not path.exists():
            return False
        state = load_checkpoint(path, map_location=self.device)
        changed = config_diff(load_config(base=state["config"]), self.cfg)
        if changed:
            raise ConfigError(f"resume=true but the config differs from checkpoint {path} in {changed}")
        self.load_state_dict(state, path)
        return True
