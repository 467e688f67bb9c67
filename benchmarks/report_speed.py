"""How long ``emergent report`` takes on a sweep of many runs (target: 100 runs in <= 30 s on 2 cores).

The runs are written with the writers real runs use (``TBLogger``, ``save_evaluation``) and
the tags they log: a config text, training scalars every ``log_every`` steps, every eval
tag per split and difficulty with pass@k / maj@k, sample texts, the vs_flops/ file, the
per-problem npz of every evaluation, hparams at close. Values are random, not trained.
Peer in the same run: reading the same event files with TensorBoard's reader alone (the
floor any report built on it pays).

    python benchmarks/report_speed.py [--runs 100] [--dir /tmp/report_bench]
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np

from emergent import tags
from emergent.envs import Scores
from emergent.platform.config import load_config, to_yaml
from emergent.platform.evaluate import Sampled, SplitResult, save_evaluation
from emergent.platform.tensorboard import TBLogger

METHODS = ("supervised", "expert_iteration", "policy_gradient", "alphazero")
SIZES = ((1, 64), (2, 128), (2, 192), (4, 256), (6, 384))  # (n_layer, d_model)


def fake_run(
    root: Path,
    method: str,
    size: tuple[int, int],
    seed: int,
    *,
    steps=1800,
    log_every=25,
    eval_every=100,
    problems=300,
    samples=16,
    pass_k=(1, 4, 16),
) -> None:
    n_layer, d_model = size
    name = f"{method}_L{n_layer}_d{d_model}_seed{seed}"
    extra = ["train.batch_size=64"] if method == "supervised" else []
    cfg = load_config(
        None,
        [
            f"train.method={method}",
            f"model.n_layer={n_layer}",
            f"model.d_model={d_model}",
            f"model.n_head={max(2, d_model // 64)}",
            f"seed={seed}",
            f"run_name={name}",
            f"logdir={root.parent}",
            f"experiment={root.name}",
            *extra,
        ],
    )
    run = cfg.run_dir
    rng = np.random.default_rng([seed, n_layer, d_model, METHODS.index(method)])
    log, vs = TBLogger(run), TBLogger(run / tags.VS_FLOPS_DIR)
    log.text(tags.TEXT_CONFIG, f"```yaml\n{to_yaml(cfg)}\n```", 0)
    flops_per_step = 6 * 128 * 20 * (12 * n_layer * d_model**2)
    for step in range(0, steps + 1):
        if step and step % log_every == 0:
            log.scalars(
                {
                    tags.TRAIN_LOSS: rng.random(),
                    tags.TRAIN_LR: 1e-3,
                    tags.TRAIN_GRAD_NORM: rng.random(),
                    tags.PERF_TOKENS_PER_S: 1e5,
                    tags.PERF_STEP_S: 0.1,
                    tags.COMPUTE_TOTAL_FLOPS: step * flops_per_step,
                    tags.COMPUTE_TRAIN_FLOPS: step * flops_per_step,
                },
                step,
            )
        if step % eval_every and step != steps:
            continue
        acc = min(1.0, step / steps + 0.1 * rng.random())
        results, scalars = {}, {}
        for split, ds in (("test", (1, 2, 3)), ("extrapolate", (4, 5))):
            diff = np.array([ds[i % len(ds)] for i in range(problems)])
            exact = rng.random(problems) < acc
            scores = Scores(
                exact, np.where(exact, 1.0, rng.random(problems)), np.where(exact, 0.0, rng.random(problems))
            )
            correct = rng.random((problems, samples)) < acc
            answers = rng.integers(0, 4, (problems, samples))
            sampled = Sampled(correct, answers, diff, {})
            results[split] = SplitResult({}, {}, [], sampled, scores, diff)
            for m, v in (
                ("exact_match", exact),
                ("token_accuracy", scores.token_accuracy),
                ("edit_distance", scores.edit_distance),
            ):
                scalars[tags.eval_tag(split, m)] = float(np.mean(v))
                for d in ds:
                    scalars[tags.eval_tag(split, m, d)] = float(np.mean(v[diff == d]))
            for k in pass_k:
                scalars[tags.pass_tag(split, k)] = scalars[tags.maj_tag(split, k)] = float(correct[:, :k].any(1).mean())
        log.scalars({**scalars, tags.PERF_ELAPSED_S: step * 0.1}, step)
        vs.scalars(
            {tags.vs_flops_tag(k): v for k, v in scalars.items()}, int(step * flops_per_step // tags.VS_FLOPS_UNIT)
        )
        for split in results:
            log.text(
                tags.TEXT_SAMPLES.format(split=split), "| prompt | completion |\n|---|---|\n| `1+2=` | `3` |", step
            )
        save_evaluation(run / tags.EVALS_DIR / f"step_{step:06d}.npz", results)
    log.hparams({"train.method": method}, {tags.eval_tag("test", "exact_match"): 0.0})
    log.close()
    vs.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--dir", default="/tmp/report_bench/sweep")
    a = p.parse_args()
    root = Path(a.dir)
    shutil.rmtree(root, ignore_errors=True)
    t0 = time.perf_counter()
    cells = [(m, s, seed) for s in SIZES for m in METHODS for seed in range(5)][: a.runs]
    for m, s, seed in cells:
        fake_run(root, m, s, seed)
    print(f"wrote {len(cells)} runs in {time.perf_counter() - t0:.1f} s under {root}")

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    t0 = time.perf_counter()
    for d in sorted(root.iterdir()):
        for sub in (d, d / tags.VS_FLOPS_DIR):
            acc = EventAccumulator(str(sub), size_guidance={"scalars": 0, "tensors": 0})
            acc.Reload()
    peer = time.perf_counter() - t0

    from emergent.platform.report import write_report

    t0 = time.perf_counter()
    write_report(root)
    took = time.perf_counter() - t0
    print("| runs | emergent report | peer: TensorBoard reader alone | target |")
    print("|---|---|---|---|")
    print(f"| {len(cells)} | {took:.1f} s | {peer:.1f} s | <= 30 s |")


if __name__ == "__main__":
    main()
