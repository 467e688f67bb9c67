"""``Run``: an ``Experiment`` bound to its run directory, driven by every runtime alike.

It owns resumption, TensorBoard, the evaluation and checkpoint schedule, the wall-clock
budget and the logging windows: each step's ``Consumed`` is recorded, and when a window closes
its scalars are aggregated, the perf rates included, with one device sync per window. A
runtime with trace workers adds its own rates through ``Run.window_hook``
(``ray_runtime.WorkerWindow``).
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from omegaconf import OmegaConf

from emergent import tags

from . import faults
from .checkpoint import LAST, save_checkpoint
from .config import Config, flatten, to_yaml
from .evaluate import SplitResult, save_evaluation, scalars
from .experiment import RESUMABLE_CHANGES, Consumed, Experiment
from .metrics import auc, reward_net_diagnostics
from .tensorboard import TBLogger

# Dense bf16 peak FLOP/s by CUDA device name (no sparsity), for MFU.
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "L4": 121e12}


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


def samples_markdown(r: SplitResult) -> str:
    rows = ["| prompt | completion | gold | correct |", "|---|---|---|---|"]
    rows += [f"| `{p}` | `{c}` | `{g}` | {'yes' if ok else 'no'} |" for p, c, g, ok in r.samples]
    return "\n".join(rows)


def log_due(cfg: Config, step: int) -> bool:
    """Whether the training scalars are logged after ``step`` (a window closes there; it
    also closes at every checkpoint)."""
    return step % cfg.train.log_every == 0 or step >= cfg.train.steps


def window_scalars(window: list[Consumed], seconds: float, peak: float | None) -> dict[str, float]:
    """Aggregate the steps since the last log into scalars (the one GPU sync per window)."""
    results = [s.result for s in window]
    out: dict[str, float] = {tags.PERF_STEP_S: seconds / len(window)}
    tokens = sum(r.tokens for r in results)
    if tokens:
        out[tags.PERF_TOKENS_PER_S] = tokens / seconds
    if peak:
        out[tags.PERF_MFU] = sum(sum(r.flops.values()) for r in results) / seconds / peak
    stepped = [r for r in results if r.loss is not None]
    if stepped:
        loss = float(torch.stack([r.loss for r in stepped]).mean())
        if not math.isfinite(loss):
            raise FloatingPointError(f"training loss became {loss}")
        last = stepped[-1]
        out.update({tags.TRAIN_LOSS: loss, tags.TRAIN_LR: last.lr, tags.TRAIN_GRAD_NORM: float(last.grad_norm)})
    extra: dict[str, list[float]] = {}
    for s in window:
        for k, v in s.scalars.items():
            extra.setdefault(k, []).append(float(v))
    out.update({k: float(np.mean(v)) for k, v in extra.items()})
    held = [r.heldout for r in results if r.heldout is not None]
    if held:  # reward-net diagnostics over every trace held out in the window
        labels = np.concatenate([h[1] for h in held])
        out.update(reward_net_diagnostics(np.concatenate([h[0] for h in held]), labels))
        process = [r.heldout_process for r in results if r.heldout is not None]
        if all(p is not None for p in process):  # a step head's score of the same traces
            out[tags.REWARD_PROCESS_AUC] = auc(np.concatenate(process), labels)
    return {k: v for k, v in out.items() if math.isfinite(v)}


class Run:
    """An ``Experiment`` bound to its run directory: resumption, TensorBoard, the eval
    and checkpoint schedule, the logging windows. Every runtime drives one (Ray: inside
    its learner actor)."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.experiment = ex = Experiment(cfg)
        for stale in cfg.run_dir.glob(f".{LAST}.*.tmp"):  # left by a process killed mid-write
            stale.unlink(missing_ok=True)
        self.resumed = cfg.resume and ex.try_resume()
        if cfg.resume and not self.resumed:
            print(f"emergent: no checkpoint at {cfg.run_dir / LAST}; starting fresh", flush=True)

        # Events up to the checkpoint's step were flushed before it was saved; later ones
        # (written by the killed process after it) are hidden by purge_step. A fresh start
        # where an earlier attempt logged (it died before its first checkpoint, or had its
        # checkpoint removed) hides all of that attempt's events: each step is logged once.
        def purge(log_dir: Path, resumed_at: int) -> int | None:
            if self.resumed:
                return resumed_at + 1
            return 0 if any(log_dir.glob("events.out.tfevents.*")) else None

        self.logger = TBLogger(cfg.run_dir, purge_step=purge(cfg.run_dir, ex.step))
        # the evaluations again, against cumulative FLOPs: its own event file, purged by FLOPs
        self.vs_flops = TBLogger(
            cfg.run_dir / tags.VS_FLOPS_DIR, purge_step=purge(cfg.run_dir / tags.VS_FLOPS_DIR, self._flop_step())
        )
        if not self.resumed:
            self.logger.text(tags.TEXT_CONFIG, f"```yaml\n{to_yaml(cfg)}\n```", 0)
        self.peak = peak_flops(ex.device)
        self._clock = time.perf_counter() - ex.elapsed_s  # wall clock of the run, over resumes
        self._done = self._due()
        self.last_eval: dict[str, float] = {}
        # set by a runtime with trace workers (ray_runtime.WorkerWindow): called as a window
        # closes, with this run and the window's wall-clock span; its scalars join the window's
        self.window_hook: Optional[Callable[["Run", float], dict[str, float]]] = None
        self._reset_window()

    def _reset_window(self) -> None:
        self.window: list[Consumed] = []
        self.window_s = 0.0  # seconds the steps of the window took
        self.window_t0 = time.perf_counter()  # wall clock at the window's start
        self.window_other = 0.0  # the learner's evaluations and checkpoints

    @property
    def step(self) -> int:
        return self.experiment.step

    @property
    def elapsed_s(self) -> float:
        """Wall-clock seconds of the run so far (a resumed run carries its earlier ones)."""
        return time.perf_counter() - self._clock

    def _flop_step(self) -> int:
        """compute/total_flops in tags.VS_FLOPS_UNIT: the step of the vs_flops/ scalars."""
        return int(self.experiment.ledger.total // tags.VS_FLOPS_UNIT)

    def _due(self) -> bool:
        t = self.cfg.train
        return (
            self.experiment.step >= t.steps
            or (t.time_limit_s is not None and self.elapsed_s >= t.time_limit_s)
            or (t.flop_budget is not None and self.experiment.ledger.total >= t.flop_budget)
        )

    @property
    def done(self) -> bool:
        """Decided once per step, in ``record``: the clock may pass the budget while a step
        is logged or checkpointed, and the step that passes it must be the one handled as
        the last (logged, evaluated, checkpointed), not one found done afterwards."""
        return self._done

    @contextmanager
    def _learner_work(self):
        """Time spent inside counts as the learner's evaluations and checkpoints."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.window_other += time.perf_counter() - t0

    def evaluate(self) -> dict[str, float]:
        with self._learner_work():
            return self._evaluate()

    def _evaluate(self) -> dict[str, float]:
        t0 = time.perf_counter()
        results = self.experiment.evaluate()
        self.last_eval = scalars(results, self.cfg.eval.frontier_threshold)
        n = self.experiment.step
        self.logger.scalars(
            {**self.last_eval, tags.PERF_EVAL_S: time.perf_counter() - t0, tags.PERF_ELAPSED_S: self.elapsed_s}, n
        )
        self.vs_flops.scalars({tags.vs_flops_tag(k): v for k, v in self.last_eval.items()}, self._flop_step())
        save_evaluation(self.cfg.run_dir / tags.EVALS_DIR / f"step_{n:06d}.npz", results)
        for split, r in results.items():
            self.logger.text(tags.TEXT_SAMPLES.format(split=split), samples_markdown(r), self.experiment.step)
        return self.last_eval

    def record(self, step: Consumed, seconds: float) -> dict[str, float] | None:
        """After a step: log the window when due, evaluate and checkpoint when due.
        Returns the logged training scalars, or None when nothing was logged."""
        now = time.perf_counter()
        self.window.append(step)
        self.window_s += seconds
        n = self.experiment.step
        self._done = last = self._due()
        checkpoint = n % self.cfg.checkpoint_every == 0 or last
        values = None
        # a checkpoint closes the window too: a resumed run cannot log steps it did not take
        # (a window half before and half after a kill would average other steps)
        if log_due(self.cfg, n) or checkpoint:
            values = window_scalars(self.window, self.window_s, self.peak)  # syncs here only
            if self.window_hook is not None:  # a runtime's own rates over the window's wall clock
                values.update(self.window_hook(self, max(now - self.window_t0, 1e-9)))
            if self.experiment.data.too_long:  # cumulative, once any draw was skipped
                values[tags.DATA_TOO_LONG] = float(self.experiment.data.too_long)
            self.logger.scalars({**values, **self.experiment.ledger.scalars()}, n)
            self._reset_window()
        if n % self.cfg.eval.every == 0 or last:
            self.evaluate()
        if checkpoint:
            self.checkpoint()
        return values

    def checkpoint(self) -> None:
        with self._learner_work():
            self.logger.flush()  # first the events, so a checkpoint never points past them
            self.vs_flops.flush()
            self.experiment.elapsed_s = self.elapsed_s
            save_checkpoint(self.cfg.run_dir / LAST, self.experiment.state_dict())
        faults.after_checkpoint(self.cfg.run_dir, self.experiment.step)  # a test's hold point, when set

    def close(self) -> dict[str, float]:
        hp = {
            k: v
            for k, v in flatten(OmegaConf.to_container(OmegaConf.structured(self.cfg))).items()
            if k not in RESUMABLE_CHANGES
        }
        hp["model.params"] = self.experiment.model.num_params()
        self.logger.hparams(hp, {k: v for k, v in self.last_eval.items() if "/d" not in k})
        self.logger.close()
        self.vs_flops.close()
        return {**self.last_eval, "step": float(self.step)}  # the step it ended at (train.time_limit_s)
