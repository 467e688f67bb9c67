"""The local runtime: one process, the reference every other runtime must agree with.

``Experiment`` assembles a run from its config (task, model, learner, data, evaluator,
ledger) and knows how to checkpoint and restore all of it; ``train_local`` is the
driver loop: train -> periodic eval on every split -> log -> checkpoint.
"""
from __future__ import annotations

import math
import random
import sys
import time
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from tqdm import tqdm

from emergent.agents.data import encode_batch
from emergent.agents.improve import METHOD_CLASSES, Experience
from emergent.agents.model import TransformerLM
from emergent.agents.reward_net import RewardNet
from emergent.agents.supervised import SupervisedLearner
from emergent.envs import TOKENIZER, Problem, Task, make_task

from . import tags
from .checkpoint import LAST, load_checkpoint, load_model_state, save_checkpoint
from .config import Config, ConfigError, to_yaml
from .data import ProblemStream
from .evaluate import Evaluator, SplitResult, scalars
from .ledger import FlopLedger
from .tensorboard import TBLogger

# Keys that may differ between a run and its resumption.
RESUMABLE_CHANGES = {"resume", "progress", "device", "train.steps", "train.time_limit_s", "eval.every",
                     "checkpoint_every", "train.log_every"}

# Dense bf16 peak FLOP/s by CUDA device name (no sparsity), for MFU.
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "L4": 121e12}


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda' but CUDA is not available; use device=cpu or device=auto")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(flatten(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def config_diff(a: Config, b: Config) -> list[str]:
    fa = flatten(OmegaConf.to_container(OmegaConf.structured(a)))
    fb = flatten(OmegaConf.to_container(OmegaConf.structured(b)))
    return sorted(k for k in fa.keys() | fb.keys() if fa.get(k) != fb.get(k) and k not in RESUMABLE_CHANGES)


def samples_markdown(r: SplitResult) -> str:
    rows = ["| prompt | completion | gold | correct |", "|---|---|---|---|"]
    rows += [f"| `{p}` | `{c}` | `{g}` | {'yes' if ok else 'no'} |" for p, c, g, ok in r.samples]
    return "\n".join(rows)


class Oracle:
    """The verifier for one batch of training problems: the only way a self-improvement
    learner learns anything about their answers. It returns exact correctness (0/1) of
    completions."""

    def __init__(self, task: Task, problems: list[Problem]) -> None:
        self._task, self._problems = task, problems

    def __call__(self, rows: np.ndarray, completions) -> np.ndarray:
        return self._task.verify_batch([self._problems[r] for r in rows], completions).exact.astype(np.float64)


def init_policy_from(model: TransformerLM, path: str) -> None:
    """Start from another run's weights (e.g. a supervised checkpoint), as AlphaGo did."""
    state = load_checkpoint(path)
    load_model_state(model, state, path)


class Experiment:
    """Everything one run is made of. Runtimes drive it; it holds no runtime logic."""

    def __init__(self, cfg: Config, *, build_data: bool = True) -> None:
        """``build_data=False`` (trace workers): no problem stream and no evaluator."""
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        self.task = make_task(cfg.task.name, format=cfg.task.format, heldout_fraction=cfg.task.heldout_fraction)
        self.model = TransformerLM(cfg.model, TOKENIZER.vocab_size).to(self.device)
        self.supervised = cfg.train.method == "supervised"
        if self.supervised:
            self.learner = SupervisedLearner(self.model, cfg.optim, cfg.train.steps, self.device,
                                             compile=cfg.train.compile)
        else:
            if cfg.improve.init_from:  # before the learner: a KL reference copies the start
                init_policy_from(self.model, cfg.improve.init_from)
            self.reward_net = RewardNet(cfg.reward.model_config(cfg.model), TOKENIZER.vocab_size).to(self.device)
            if cfg.reward.init == "policy":  # the judge starts from what the starting policy knows
                self.reward_net.trunk.load_state_dict(self.model.state_dict())
            extra = {"search_cfg": cfg.search} if cfg.train.method == "alphazero" else {}
            self.learner = METHOD_CLASSES[cfg.train.method](
                self.model, self.reward_net, cfg.optim, cfg.reward, cfg.improve, cfg.train.steps, self.device,
                cfg.seed, **extra)
        self.ledger = FlopLedger()
        self.step = 0
        self.elapsed_s = 0.0  # wall clock of the run at its last checkpoint (Run keeps the live one)
        if not build_data:
            return
        self.data = ProblemStream(self.task, cfg.splits, seed=cfg.seed, train_size=cfg.task.train_size,
                                  data_seed=cfg.task.data_seed, curriculum=cfg.train.curriculum,
                                  window=cfg.train.curriculum_window)
        self.evaluator = Evaluator(
            self.task, cfg.splits, problems_per_split=cfg.eval.problems, seed=cfg.eval.seed,
            split_names=cfg.eval.splits, batch_size=cfg.eval.batch_size, samples=cfg.eval.samples,
            train_set=self.data.fixed, decode=cfg.eval.decode, search_cfg=cfg.search,
        )
        self._check_context()

    def _check_context(self) -> None:
        """Fail before training if a training example cannot fit the context: every example
        of a fixed set, or 64 draws at the top difficulty. Self-improvers write their own
        completions (cut at the context), so for them only prompts must fit."""
        examples = self.data.fixed or self.task.sample(np.random.default_rng(0), 64, "train",
                                                       [self.cfg.task.difficulty[1]])
        longest = max(examples, key=self._length)
        need = self._length(longest)
        if need > self.cfg.model.max_len:
            raise ConfigError(
                f"model.max_len={self.cfg.model.max_len} is too short for task.difficulty={self.cfg.task.difficulty}: "
                f"{longest.prompt + (self._target(longest) if self.supervised else '')!r} needs {need} tokens"
            )

    def _length(self, p: Problem) -> int:
        """Tokens a training example takes: BOS, prompt, gold target and EOS (supervised),
        or BOS, prompt and room for one token (self-improvement)."""
        return len(p.prompt) + (len(self._target(p)) + 2 if self.supervised else 2)

    def _fits(self, p: Problem) -> bool:
        return self._length(p) <= self.cfg.model.max_len

    def _target(self, p) -> str:
        return p.trace if self.cfg.train.target == "trace" else p.answer

    # -- one training step ------------------------------------------------------------
    def train_step(self) -> dict:
        """One update (supervised) or one iteration (self-improvement).

        Returns ``loss`` (0-d tensor, absent when nothing was trained), ``lr``,
        ``grad_norm``, ``tokens``, ``flops`` (all FLOPs of the step), and for
        self-improvement ``scalars`` (extra tags) and ``heldout`` (reward-net probs, labels).
        """
        if self.supervised:
            # an unlimited stream can, rarely, draw an example longer than every one the
            # startup check saw: it is skipped (and counted), not a crash mid-run
            problems = self.data.next(self.cfg.train.batch_size, fits=self._fits)
            batch = encode_batch(TOKENIZER, [p.prompt for p in problems], [self._target(p) for p in problems],
                                 self.cfg.model.max_len)
            curriculum = self.cfg.train.curriculum is not None
            metrics = self.learner.update(batch, exact=curriculum)
            if curriculum:  # the one host sync per step a curriculum costs
                metrics["scalars"] = {tags.TRAIN_CURRICULUM: float(self.data.top)}  # what this batch drew from
                self.data.report(np.array([p.difficulty for p in problems]), metrics.pop("exact").cpu().numpy())
            self.ledger.add("train", metrics["flops"])
            self.step += 1
            return metrics
        return self.consume(self.collect(self.data.next(self.cfg.improve.problems_per_iter)))

    def collect(self, problems: list[Problem]) -> Experience:
        """Traces for ``problems`` by the current weights. The learner sees their prompts,
        and their answers only through the oracle's verdicts."""
        exp = self.learner.collect([p.prompt for p in problems], Oracle(self.task, problems))
        exp.difficulties = np.array([p.difficulty for p in problems])  # for the curriculum; not the learner's
        return exp

    def consume(self, experience: Experience) -> dict:
        """Learn from one batch of experience; the ledger counts what collecting and
        learning it cost (and nothing for experience never consumed)."""
        out = self.learner.learn(experience)
        for part, flops in [*experience.flops.items(), *out["flops"].items()]:
            self.ledger.add(part, flops)
        m = {**experience.metrics, **out["metrics"]}
        if self.cfg.train.curriculum is not None:  # each problem's share of accepted traces
            P = len(experience.prompts)
            accuracy = np.bincount(experience.rows, weights=experience.labels, minlength=P) / np.bincount(
                experience.rows, minlength=P).clip(min=1)
            m[tags.TRAIN_CURRICULUM] = float(self.data.top)  # (Ray: what the next batches draw from)
            self.data.report(experience.difficulties, accuracy)
        metrics = {k: m[k] for k in ("loss", "lr", "grad_norm") if k in m}
        metrics["tokens"] = m.get("tokens", 0)
        metrics["flops"] = sum(experience.flops.values()) + sum(out["flops"].values())
        metrics["scalars"] = {k: v for k, v in m.items() if "/" in k and not k.startswith("_")}
        metrics["heldout"] = m.get("_heldout")
        self.step += 1
        return metrics

    def evaluate(self) -> dict[str, SplitResult]:
        return self.evaluator.run(self.model, self.device, getattr(self, "reward_net", None))

    # -- checkpoints --------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "elapsed_s": self.elapsed_s,
            "method": self.cfg.train.method,
            "model": self.model.state_dict(),
            "learner": self.learner.state_dict(),
            "data": self.data.state_dict(),
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
        self.learner.load_state_dict(state["learner"])
        self.data.load_state_dict(state["data"])
        self.ledger.load_state_dict(state["ledger"])
        torch.set_rng_state(state["rng"]["torch"])
        if state["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        random.setstate((3, tuple(state["rng"]["python"]), None))
        self.step = int(state["step"])
        self.elapsed_s = float(state.get("elapsed_s", 0.0))


def try_resume(exp: Experiment) -> bool:
    """Restore the run from ``<run_dir>/last.pt`` if it exists; False when starting fresh."""
    path = exp.cfg.run_dir / LAST
    if not path.exists():
        return False
    state = load_checkpoint(path, map_location=exp.device)
    from .config import load_config  # local import: config <-> runtime stay decoupled

    saved = load_config(base=state["config"])
    changed = config_diff(saved, exp.cfg)
    if changed:
        raise ConfigError(f"resume=true but the config differs from checkpoint {path} in {changed}")
    exp.load_state_dict(state, path)
    return True


def window_scalars(window: list[dict], seconds: float, peak: float | None) -> dict[str, float]:
    """Aggregate the steps since the last log into scalars (the one GPU sync per window)."""
    from emergent.agents.improve import RewardTrainer

    out: dict[str, float] = {tags.PERF_STEP_S: seconds / len(window)}
    tokens = sum(m["tokens"] for m in window)
    if tokens:
        out[tags.PERF_TOKENS_PER_S] = tokens / seconds
    if peak:
        out[tags.PERF_MFU] = sum(m["flops"] for m in window) / seconds / peak
    losses = [m["loss"] for m in window if "loss" in m]
    if losses:
        loss = float(torch.stack(losses).mean())
        if not math.isfinite(loss):
            raise FloatingPointError(f"training loss became {loss}")
        last = next(m for m in reversed(window) if "loss" in m)
        out.update({tags.TRAIN_LOSS: loss, tags.TRAIN_LR: last["lr"], tags.TRAIN_GRAD_NORM: float(last["grad_norm"])})
    extra: dict[str, list[float]] = {}
    for m in window:
        for k, v in m.get("scalars", {}).items():
            extra.setdefault(k, []).append(float(v))
    out.update({k: float(np.mean(v)) for k, v in extra.items()})
    held = [m["heldout"] for m in window if m.get("heldout") is not None]
    if held:  # reward-net diagnostics over every trace held out in the window
        probs, labels = np.concatenate([h[0] for h in held]), np.concatenate([h[1] for h in held])
        d = RewardTrainer.diagnostics(probs, labels)
        out.update({tags.REWARD_AUC: d["auc"], tags.REWARD_ECE: d["ece"],
                    tags.REWARD_DISAGREEMENT: d["verifier_disagreement"]})
    return {k: v for k, v in out.items() if math.isfinite(v)}


def log_due(cfg: Config, step: int) -> bool:
    """Whether the training scalars are logged after ``step`` (a window closes there)."""
    return step % cfg.train.log_every == 0 or step >= cfg.train.steps


class Run:
    """An ``Experiment`` bound to its run directory: resumption, TensorBoard, the eval
    and checkpoint schedule. Every runtime drives one (Ray: inside its learner actor)."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.exp = exp = Experiment(cfg)
        for stale in cfg.run_dir.glob(f".{LAST}.*.tmp"):  # left by a process killed mid-write
            stale.unlink(missing_ok=True)
        self.resumed = cfg.resume and try_resume(exp)
        if cfg.resume and not self.resumed:
            print(f"emergent: no checkpoint at {cfg.run_dir / LAST}; starting fresh", flush=True)
        # Events up to the checkpoint's step were flushed before it was saved; later ones
        # (written by the killed process after it) are hidden by purge_step.
        self.logger = TBLogger(cfg.run_dir, purge_step=exp.step + 1 if self.resumed else None)
        if not self.resumed:
            self.logger.text(tags.TEXT_CONFIG, f"```yaml\n{to_yaml(cfg)}\n```", 0)
        self.peak = peak_flops(exp.device)
        self._clock = time.perf_counter() - exp.elapsed_s  # wall clock of the run, over resumes
        self._done = self._due()
        self.last_eval: dict[str, float] = {}
        self.window: list[dict] = []
        self.window_s = 0.0

    @property
    def step(self) -> int:
        return self.exp.step

    @property
    def elapsed_s(self) -> float:
        """Wall-clock seconds of the run so far (a resumed run carries its earlier ones)."""
        return time.perf_counter() - self._clock

    def _due(self) -> bool:
        limit = self.cfg.train.time_limit_s
        return self.exp.step >= self.cfg.train.steps or (limit is not None and self.elapsed_s >= limit)

    @property
    def done(self) -> bool:
        """Decided once per step, in ``record``: the clock may pass the budget while a step
        is logged or checkpointed, and the step that passes it must be the one handled as
        the last (logged, evaluated, checkpointed), not one found done afterwards."""
        return self._done

    def evaluate(self) -> dict[str, float]:
        t0 = time.perf_counter()
        results = self.exp.evaluate()
        self.last_eval = scalars(results)
        self.logger.scalars({**self.last_eval, tags.PERF_EVAL_S: time.perf_counter() - t0,
                             tags.PERF_ELAPSED_S: self.elapsed_s}, self.exp.step)
        for split, r in results.items():
            self.logger.text(tags.TEXT_SAMPLES.format(split=split), samples_markdown(r), self.exp.step)
        return self.last_eval

    def record(self, metrics: dict, seconds: float) -> dict[str, float] | None:
        """After a step: log the window when due, evaluate and checkpoint when due.
        Returns the logged training scalars, or None when nothing was logged."""
        self.window.append(metrics)
        self.window_s += seconds
        step = self.exp.step
        self._done = last = self._due()
        values = None
        if log_due(self.cfg, step) or last:
            values = window_scalars(self.window, self.window_s, self.peak)  # syncs here only
            if self.exp.data.too_long:  # cumulative, once any draw was skipped
                values[tags.DATA_TOO_LONG] = float(self.exp.data.too_long)
            self.logger.scalars({**values, **self.exp.ledger.scalars()}, step)
            self.window, self.window_s = [], 0.0
        if step % self.cfg.eval.every == 0 or last:
            self.evaluate()
        if step % self.cfg.checkpoint_every == 0 or last:
            self.checkpoint()
        return values

    def checkpoint(self) -> None:
        self.logger.flush()  # first the events, so a checkpoint never points past them
        self.exp.elapsed_s = self.elapsed_s
        save_checkpoint(self.cfg.run_dir / LAST, self.exp.state_dict())

    def close(self) -> dict[str, float]:
        hp = {k: v for k, v in flatten(OmegaConf.to_container(OmegaConf.structured(self.cfg))).items()
              if k not in RESUMABLE_CHANGES}
        hp["model.params"] = self.exp.model.num_params()
        self.logger.hparams(hp, {k: v for k, v in self.last_eval.items() if "/d" not in k})
        self.logger.close()
        return {**self.last_eval, "step": float(self.step)}  # the step it ended at (train.time_limit_s)


def train_local(cfg: Config) -> dict[str, float]:
    """Train one run in this process; returns the last eval's scalars and ``step``."""
    run = Run(cfg)
    bar = tqdm(total=cfg.train.steps, initial=run.step, disable=not cfg.progress, dynamic_ncols=True,
               desc=f"{cfg.train.method} {cfg.task.name}",
               mininterval=0.2 if sys.stderr.isatty() else 30.0)  # a log file gets a line per 30 s
    if run.step == 0:
        run.evaluate()
    try:
        while not run.done:
            t0 = time.perf_counter()
            metrics = run.exp.train_step()
            values = run.record(metrics, time.perf_counter() - t0)
            if values is not None:
                bar.set_postfix(loss=f"{values.get(tags.TRAIN_LOSS, float('nan')):.4f}",
                                test_em=f"{run.last_eval.get(tags.eval_tag('test', 'exact_match'), float('nan')):.3f}")
            bar.update(1)
    finally:
        bar.close()
    return run.close()
