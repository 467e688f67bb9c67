"""The one entry point: ``emergent train|eval ...`` (also ``python -m emergent``).

  emergent train [CONFIG.yaml] [key=value ...]
  emergent eval CHECKPOINT [key=value ...]
  emergent sweep SWEEP.yaml [key=value ...]
  emergent report LOGDIR/EXPERIMENT

Bad input of any kind exits with code 2 and one line on stderr naming the problem.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from emergent import tags

from .errors import UserError

USAGE_EXAMPLES = """examples:
  emergent train                                   # quickstart defaults, local runtime
  emergent train configs/quickstart.yaml model.d_model=256 seed=3 logdir=/tmp/runs
  emergent eval runs/quickstart/supervised_L2_d128_learned_s0/last.pt task.extrapolate=[4,8]
"""


def _split_config(args: Sequence[str]) -> tuple[str | None, list[str]]:
    if args and "=" not in args[0]:
        return args[0], list(args[1:])
    return None, list(args)


def cmd_train(args: Sequence[str]) -> int:
    from .config import load_config
    from .local import train_local

    path, overrides = _split_config(args)
    cfg = load_config(path, overrides)
    if cfg.runtime == "ray":
        from .ray_runtime import train_ray

        final = train_ray(cfg)
    else:
        final = train_local(cfg)
    shown = {k: v for k, v in final.items() if k.endswith(tags.EVAL_EXACT) and "/d" not in k}
    print(
        f"emergent: finished {cfg.run_dir} at step {int(final['step'])}: "
        + ", ".join(f"{k}={v:.4f}" for k, v in sorted(shown.items())),
        flush=True,
    )
    return 0


def cmd_eval(args: Sequence[str]) -> int:
    from .checkpoint import load_checkpoint
    from .config import load_config
    from .evaluate import scalars
    from .experiment import Experiment

    if not args:
        raise UserError("eval needs a checkpoint path: emergent eval CHECKPOINT [key=value ...]")
    path, overrides = args[0], list(args[1:])
    state = load_checkpoint(path)
    cfg = load_config(base=state["config"], overrides=overrides)
    exp = Experiment(cfg)
    from .checkpoint import load_model_state

    load_model_state(exp.model, state, path)
    results = exp.evaluate()
    print(f"checkpoint {path} (step {state['step']}, task {cfg.task.name}, format {exp.task.format})")
    steps = exp.task.has_step_checker  # a column for the right answers whose scratchpad has a false step
    columns = [*tags.EVAL_METRICS, *([tags.EVAL_FALSE_STEPS] if steps else [])]
    print(f"{'split':<12} {'difficulty':>10} {'n':>6} " + " ".join(f"{c:>14}" for c in columns))
    for split, r in results.items():
        n = len(exp.evaluator.sets[split])
        rows = [("all", n, r.metrics)] + [
            (str(d), sum(p.difficulty == d for p in exp.evaluator.sets[split]), m) for d, m in r.by_difficulty.items()
        ]
        for label, count, m in rows:
            print(f"{split:<12} {label:>10} {count:>6} " + " ".join(f"{m[c]:>14.4f}" for c in columns))
    frontiers = scalars(results, cfg.eval.frontier_threshold)
    print(
        f"length frontier (exact match >= {cfg.eval.frontier_threshold:g} at every length up to it): "
        + ", ".join(f"{split} {frontiers[tags.eval_tag(split, tags.EVAL_FRONTIER)]:.0f}" for split in results)
        + (f", held out {frontiers[tags.EVAL_LENGTH_FRONTIER]:.0f}" if tags.EVAL_LENGTH_FRONTIER in frontiers else "")
    )
    for split, r in results.items():  # eval.pass_k
        if r.sampled is not None:
            n = r.sampled.correct.shape[1]
            print(
                f"{split} ({n} samples per problem at temperature {cfg.eval.temperature}): "
                + ", ".join(
                    f"pass@{k} {r.sampled.scalars[tags.pass_tag(split, k)]:.4f}, maj@{k} "
                    f"{r.sampled.scalars[tags.maj_tag(split, k)]:.4f}"
                    for k in exp.evaluator.pass_k
                )
            )
    return 0


def cmd_sweep(args: Sequence[str]) -> int:
    from .sweep import run_sweep

    return run_sweep(args[0], list(args[1:]))


def cmd_report(args: Sequence[str]) -> int:
    from .report import write_report

    if len(args) != 1:
        raise UserError("report needs one directory: emergent report <logdir>/<experiment>")
    out = write_report(args[0])
    print(f"emergent: wrote {out} and its figures", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="emergent",
        description="Supervised vs self-improving Transformers on verifiable reasoning tasks.",
        epilog=USAGE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_train = sub.add_parser(
        "train", help="train one run", epilog=USAGE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p_train.add_argument("args", nargs="*", metavar="[CONFIG.yaml] key=value", help="config file and overrides")
    p_eval = sub.add_parser("eval", help="evaluate a checkpoint per split and difficulty")
    p_eval.add_argument("args", nargs="+", metavar="CHECKPOINT [key=value]", help="checkpoint and overrides")
    p_sweep = sub.add_parser("sweep", help="a grid of runs as Ray tasks (see emergent/platform/sweep.py)")
    p_sweep.add_argument(
        "args", nargs="+", metavar="SWEEP.yaml [key=value]", help="sweep file and overrides for every run"
    )
    p_report = sub.add_parser(
        "report", help="report.md and figures from an experiment's runs (see emergent/platform/report.py)"
    )
    p_report.add_argument("args", nargs=1, metavar="LOGDIR/EXPERIMENT", help="the directory holding the runs")
    ns = parser.parse_args(argv)
    try:
        return {"train": cmd_train, "eval": cmd_eval, "sweep": cmd_sweep, "report": cmd_report}[ns.command](ns.args)
    except UserError as e:
        print(f"emergent: error: {e}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        print("emergent: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
