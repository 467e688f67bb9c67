"""The local runtime: one process, the reference every other runtime must agree with.

train -> periodic eval on every split -> log -> checkpoint, all decided by ``Run``.
"""

from __future__ import annotations

import sys
import time

from tqdm import tqdm

from emergent import tags

from .config import Config
from .run import Run


def train_local(cfg: Config) -> dict[str, float]:
    """Train one run in this process; returns the last eval's scalars and ``step``."""
    run = Run(cfg)
    bar = tqdm(
        total=cfg.train.steps,
        initial=run.step,
        disable=not cfg.progress,
        dynamic_ncols=True,
        desc=f"{cfg.train.method} {cfg.task.name}",
        mininterval=0.2 if sys.stderr.isatty() else 30.0,
    )  # a log file gets a line per 30 s
    if run.step == 0:
        run.evaluate()
    try:
        while not run.done:
            t0 = time.perf_counter()
            step = run.experiment.train_step()
            values = run.record(step, time.perf_counter() - t0)
            if values is not None:
                bar.set_postfix(
                    loss=f"{values.get(tags.TRAIN_LOSS, float('nan')):.4f}",
                    test_em=f"{run.last_eval.get(tags.eval_tag('test', 'exact_match'), float('nan')):.3f}",
                )
            bar.update(1)
    finally:
        bar.close()
    return run.close()
