"""``emergent report <logdir>/<experiment>``: the comparison, drawn from what the runs logged.

Nothing is re-run. Each run's TensorBoard events are read with TensorBoard's own reader
(which also drops the events a resumed run purged), its config from the ``config`` text it
logged, and the per-problem verdicts of its evaluations from ``<run>/evals/step_N.npz``.
Runs are grouped into *series* (the method, plus any grid value that is neither the seed
nor a model size: a position scheme other than learned is one) and model sizes (parameter
count at learned positions); the seeds of a group give the mean and a 95 % Student-t
interval. Written beside the runs:

- ``compute.png``    (a) test exact match against cumulative FLOPs, warm starts included
- ``size.png``       (b) final exact match and token accuracy against parameters, log x
- ``difficulty.png`` (c) exact match per difficulty, training and extrapolation ranges marked
- ``pass_at_k.png``  (d) pass@k against k (runs with ``eval.pass_k``)
- ``frontier.png``   (f) the length frontier (``eval/frontier``) against cumulative FLOPs, where logged
- ``report.md``      (e) a table per series x size, with each method's difference from
  supervised at equal FLOPs and a 95 % interval over seeds and problems (``stats.py``)

A sweep still running gives a partial report that says so (``sweep.json`` lists its runs).
"""

from __future__ import annotations

import functools
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import yaml

from emergent import tags
from emergent.envs import TASKS

from .checkpoint import FAILED, SWEEP_FILE, atomic_write
from .errors import UserError
from .metrics import pass_at_k
from .stats import Interval, difference_interval, t_interval

REFERENCE = "supervised"  # with learned positions: the series every other is compared with
SPLIT, EXTRA = "test", "extrapolate"


def difficulty_label(task: str) -> str:
    """What the task's difficulty counts (its ``Task.difficulty_label``), for the figures' axes."""
    return TASKS[task].difficulty_label if task in TASKS else "the task knob"


@dataclass(frozen=True)
class RunRecord:
    name: str
    path: Path
    series: str  # method (+ grid values that are neither seed nor model size)
    reference: str  # the supervised series it is compared with (same other grid values)
    method: str
    task: str
    params: int
    size: str  # "0.41M (L2 d128)"
    seed: int
    finished: bool
    steps: np.ndarray  # [E] training step of each evaluation
    flops: np.ndarray  # [E] cumulative FLOPs at each evaluation, warm start included
    evals: dict  # eval tag -> [E] values
    elapsed_s: float  # wall clock at the last evaluation
    train_range: tuple[int, int]
    extrapolate_range: tuple[int, int]
    budget: Optional[float] = None  # train.flop_budget: the run ends at the step that passes it
    shares_start: bool = False  # started from its seed's shared warm start (or is one)
    check_steps: bool = False  # task.check_steps: the verdict already required every step true
    scheme: str = ""  # its position scheme when not learned ("pos=abacus, place_offset=10")

    def final(self, tag: str) -> float:
        v = self.evals.get(tag)
        return float(v[-1]) if v is not None and len(v) else float("nan")

    def sound_final(self, split: str) -> float:
        """The last sound exact match on ``split``: logged, or for a run logged before it was,
        from the same evaluation's exact match and false-step share (right answers with a
        false step, over right answers: sound = exact match x (1 - false steps) when the
        verifier judged answers alone; exact match itself under ``task.check_steps``); nan
        where the task has no step checker."""
        logged = self.final(tags.eval_tag(split, tags.EVAL_SOUND_EXACT))
        if np.isfinite(logged):
            return logged
        exact, false = (self.final(tags.eval_tag(split, m)) for m in (tags.EVAL_EXACT, tags.EVAL_FALSE_STEPS))
        if not np.isfinite(false):  # no step checker
            return float("nan")
        return exact if self.check_steps else exact * (1 - false)  # with check_steps a verdict is sound already

    def problem_record(self, step: int) -> Optional[dict]:
        path = self.path / tags.EVALS_DIR / f"step_{step:06d}.npz"
        if not path.is_file():
            return None
        with np.load(path) as z:
            return {k: z[k] for k in z.files}


@dataclass(frozen=True)
class Status:
    total: int
    finished: int
    failed: tuple[str, ...]  # names of the runs that failed
    running: int
    pending: int

    @property
    def partial(self) -> bool:
        """Some run may still log: the sweep is running, or was stopped before it ended."""
        return self.running + self.pending > 0

    def headline(self, root: Path) -> str:
        """The report's first line: partial, ended with failures, or complete."""
        if self.partial:
            return (
                f"**Partial report**: {self.line()}. Figures and table use the evaluations logged so far; "
                f"run `emergent report {root}` again when the sweep ends."
            )
        if self.failed:
            return (
                f"The sweep ended: {self.finished} of {self.total} runs finished; {len(self.failed)} failed "
                f"({', '.join(self.failed)}: see their `failed.txt`) and are left out."
            )
        return f"All {self.total} runs finished."

    def line(self) -> str:
        return (
            f"{self.finished} of {self.total} runs finished, {self.running} started (running, or stopped "
            f"unfinished), {self.pending} not started, {len(self.failed)} failed"
        )


@functools.lru_cache(maxsize=None)
def _params(model_json: str) -> int:
    """Parameter count of a model config (built once per distinct config)."""
    import torch

    from emergent.agents.model import ModelConfig, TransformerLM
    from emergent.envs import TOKENIZER

    with torch.no_grad():
        return TransformerLM(ModelConfig(**json.loads(model_json)), TOKENIZER.vocab_size).num_params()


def read_run(path: Path, cell: Optional[dict] = None) -> Optional[RunRecord]:
    """One run's evaluations from its event files; None if it has logged no evaluation yet."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(path), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    tensors, scalars = set(acc.Tags()["tensors"]), set(acc.Tags()["scalars"])
    main = tags.eval_tag(SPLIT, tags.EVAL_EXACT)
    config_tag = tags.TEXT_CONFIG + "/text_summary"
    if main not in scalars or config_tag not in tensors:
        return None
    text = acc.Tensors(config_tag)[0].tensor_proto.string_val[0].decode()
    cfg = yaml.safe_load(text.strip().removeprefix("```yaml").removesuffix("```"))  # the run's resolved config
    steps = np.array([e.step for e in acc.Scalars(main)])
    evals = {t: np.array([e.value for e in acc.Scalars(t)]) for t in scalars if t.startswith("eval/")}
    flops_acc = EventAccumulator(str(path / tags.VS_FLOPS_DIR), size_guidance={"scalars": 0})
    flops_acc.Reload()
    vs = (
        [e.step for e in flops_acc.Scalars(tags.vs_flops_tag(main))]
        if tags.vs_flops_tag(main) in flops_acc.Tags()["scalars"]
        else []
    )
    e = min(len(steps), len(vs))  # an evaluation is logged to both files, in the same order
    evals = {t: v[:e] for t, v in evals.items() if len(v) >= e}
    elapsed = [x.value for x in acc.Scalars(tags.PERF_ELAPSED_S)] if tags.PERF_ELAPSED_S in scalars else [np.nan]
    method = str(cfg["train"]["method"])
    role = (cell or {}).get("role", "run")
    values = (cell or {}).get("values", {})
    extras = [
        f"{k.split('.')[-1]}={v}"
        for k, v in values.items()
        if k not in ("seed", "train.method") and not k.startswith("model.")
    ]
    model = cfg["model"]  # its position scheme names the series (learned, the default, goes unsaid)
    scheme = [f"pos={model['pos']}"] if model.get("pos", "learned") != "learned" else []
    scheme += [f"place_offset={model['place_offset']}"] if model.get("place_offset") else []
    series = ", ".join(["warm start" if role == "warm_start" else method, *scheme, *extras])
    scheme = ", ".join(scheme)
    reference = ", ".join([REFERENCE, *extras])
    # its size: the parameters at learned positions (a scheme's own table does not make a size)
    params = _params(json.dumps({**model, "pos": "learned", "place_offset": 0}, sort_keys=True))
    try:  # the hparams summary is written when a run closes
        done = "_hparams_/session_end_info" in acc.PluginTagToContent("hparams")
    except KeyError:
        done = False
    task = cfg["task"]
    return RunRecord(
        path.name,
        path,
        series,
        reference,
        "warm_start" if role == "warm_start" else method,
        str(task["name"]),
        params,
        f"{params / 1e6:.2f}M (L{model['n_layer']} d{model['d_model']})",
        int(cfg["seed"]),
        done,
        steps[:e],
        np.asarray(vs[:e], dtype=np.float64) * tags.VS_FLOPS_UNIT,
        evals,
        float(elapsed[-1]),
        tuple(task["difficulty"]),
        tuple(task["extrapolate"]),
        cfg["train"].get("flop_budget"),
        role == "warm_start" or bool((cell or {}).get("warm_start")),
        bool(task.get("check_steps", False)),
        scheme,
    )


def read_experiment(root: Path) -> tuple[list[RunRecord], Status]:
    """Every run of an experiment directory (the cells of ``sweep.json`` when it exists)."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"report: {root} is not a directory (give <logdir>/<experiment>)")
    sweep = root / SWEEP_FILE
    if sweep.is_file():
        cells = json.loads(sweep.read_text())["cells"]
    else:
        cells = [
            {"name": p.name} for p in sorted(root.iterdir()) if p.is_dir() and any(p.glob("events.out.tfevents.*"))
        ]
    runs, failed, running, pending = [], [], 0, 0
    for cell in cells:
        path = root / cell["name"]
        if (path / FAILED).is_file():  # left out: what it logged stops wherever it broke
            failed.append(cell["name"])
            continue
        run = read_run(path, cell) if path.is_dir() else None
        if run is not None:
            runs.append(run)
        if run is None or not run.finished:
            running, pending = (running + 1, pending) if path.is_dir() else (running, pending + 1)
    if not runs:
        raise UserError(f"report: no run under {root} has logged an evaluation yet")
    return runs, Status(len(cells), sum(r.finished for r in runs), tuple(failed), running, pending)


def groups(runs: list[RunRecord]) -> dict[tuple[int, str], list[RunRecord]]:
    """(params, series) -> its runs (one per seed), sizes ascending, the reference first."""
    out: dict[tuple[int, str], list[RunRecord]] = {}
    for r in sorted(runs, key=lambda r: (r.params, r.series != r.reference, r.series, r.seed)):
        out.setdefault((r.params, r.series), []).append(r)
    return out


@dataclass(frozen=True)
class Reading:
    """One run read at a common FLOP count."""

    verdicts: np.ndarray  # [P] per-problem test verdicts (fractional when interpolated), or [1] the mean
    flops: float  # FLOPs of what was read: the evaluation's own, or F when interpolated
    interpolated: bool


def read_flops(r: RunRecord) -> np.ndarray:
    """[E] the FLOPs each evaluation counts as for comparison: a run that reached its
    ``train.flop_budget`` evaluated the step that passed it, and that evaluation counts as
    at the budget (it overshoots by less than one step)."""
    return np.minimum(r.flops, r.budget) if r.budget else r.flops


def read_at(r: RunRecord, flops: float) -> Optional[Reading]:
    """Run ``r``'s test verdicts at ``flops``: its evaluation there, else the linear
    interpolation of the two around it; None before its first evaluation or past its last."""
    x = read_flops(r)
    if not x[0] <= flops <= x[-1] * (1 + 1e-12):
        return None
    i = min(int(np.searchsorted(x, flops, side="left")), len(x) - 1)

    def verdicts(j: int) -> np.ndarray:
        rec = r.problem_record(int(r.steps[j]))
        key = f"{SPLIT}/exact"
        if rec is not None and key in rec:
            return rec[key].astype(np.float64)
        return np.array([r.evals[tags.eval_tag(SPLIT, tags.EVAL_EXACT)][j]], dtype=np.float64)

    if math.isclose(x[i], flops, rel_tol=1e-12) or i == 0:
        return Reading(verdicts(i), float(r.flops[i]), False)
    w = (flops - x[i - 1]) / (x[i] - x[i - 1])
    lo, hi = verdicts(i - 1), verdicts(i)
    if lo.shape != hi.shape:  # one of the two has no per-problem record: means only
        lo, hi = lo.mean(keepdims=True), hi.mean(keepdims=True)
    return Reading((1 - w) * lo + w * hi, float(flops), True)


@dataclass(frozen=True)
class Comparison:
    """A series against its reference at equal FLOPs."""

    interval: Interval
    flops: float  # F: where both were read
    read: tuple[float, float]  # mean FLOPs each side's readings stand at (series, reference)
    interpolated: tuple[bool, bool]


def pairs(runs: list[RunRecord], ref: list[RunRecord]) -> bool:
    """Seed s of ``runs`` and of ``ref`` share their start: the series started from its seeds'
    shared warm starts, which are the reference's own prefix (same seeds, same position
    scheme: a warm start with abacus positions is no prefix of a learned-position run)."""
    runs, ref = sorted(runs, key=lambda r: r.seed), sorted(ref, key=lambda r: r.seed)
    return (
        all(r.shares_start for r in runs)
        and [r.seed for r in runs] == [r.seed for r in ref]
        and {r.scheme for r in runs} == {r.scheme for r in ref}
    )


def frontier_difference(runs: list[RunRecord], ref: list[RunRecord]) -> Optional[Interval]:
    """The final length frontier's difference from the reference's, with its 95 % interval
    over seeds (paired as ``pairs``); None where a side logged none. Read at the finals:
    equal FLOPs when every run ended at the sweep's budget."""
    tag = tags.EVAL_LENGTH_FRONTIER
    runs, ref = sorted(runs, key=lambda r: r.seed), sorted(ref, key=lambda r: r.seed)
    a, b = (np.array([[r.final(tag)] for r in rs]) for rs in (runs, ref))
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return None
    return difference_interval(a, b, paired=pairs(runs, ref))


def equal_flops_difference(runs: list[RunRecord], ref: list[RunRecord]) -> Optional[Comparison]:
    """Each method's test exact match minus supervised's at the same FLOPs F, the smallest
    final (budget-clipped, ``read_flops``) FLOPs of any run of either: when every run
    reached the budget, every run is read at its budget evaluation; otherwise at F, between
    its evaluations by linear interpolation. Seeds pair when the series started from its
    seeds' shared warm starts (seed s of both sides then share their first F_warm FLOPs)."""
    paired = pairs(runs, ref)
    flops = min(read_flops(r)[-1] for r in [*runs, *ref])
    runs, ref = sorted(runs, key=lambda r: r.seed), sorted(ref, key=lambda r: r.seed)
    a, b = [read_at(r, flops) for r in runs], [read_at(r, flops) for r in ref]
    if any(x is None for x in a + b):
        return None
    rows = [x.verdicts for x in a + b]
    if len({len(v) for v in rows}) != 1 or len(rows[0]) == 1:  # per-problem verdicts for every run, or means
        rows = [v.mean(keepdims=True) for v in rows]
    va, vb = np.stack(rows[: len(a)]), np.stack(rows[len(a) :])
    return Comparison(
        difference_interval(va, vb, paired=paired),
        float(flops),
        (float(np.mean([x.flops for x in a])), float(np.mean([x.flops for x in b]))),
        (any(x.interpolated for x in a), any(x.interpolated for x in b)),
    )


# -- figures ------------------------------------------------------------------------------------


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    atomic_write(path, lambda f: f.write(buf.getvalue()))


def _panels(n: int, title: str):
    plt = _plt()
    fig, axes = plt.subplots(1, n, figsize=(5.2 * n, 4), squeeze=False)
    fig.suptitle(title)
    return fig, axes[0]


def _band(ax, x, mean, half, label, **kw):
    (line,) = ax.plot(x, mean, label=label, **kw)
    if np.isfinite(half).any():
        ax.fill_between(x, mean - half, mean + half, color=line.get_color(), alpha=0.2, linewidth=0)


def _band_vs_flops(ax, rs: list[RunRecord], tag: str, series: str) -> None:
    """One series' ``tag`` against cumulative FLOPs over the span every seed covers: mean and
    95 % band over seeds."""
    lo, hi = max(r.flops[0] for r in rs), min(r.flops[-1] for r in rs)
    grid = np.unique(np.concatenate([r.flops[(r.flops >= lo) & (r.flops <= hi)] for r in rs]))
    curves = np.stack([np.interp(grid, r.flops, r.evals[tag]) for r in rs])
    _band(ax, grid, *t_interval(curves), f"{series} ({len(rs)} seeds)", marker=".")


def figure_compute(g, sizes, task: str, path: Path) -> None:
    """(a) test exact match against cumulative FLOPs, mean and 95 % band over seeds."""
    fig, axes = _panels(len(sizes), f"{task}: test exact match vs compute (mean, 95% CI over seeds)")
    tag = tags.eval_tag(SPLIT, tags.EVAL_EXACT)
    for ax, (params, size) in zip(axes, sizes):
        for (p, series), rs in g.items():
            if p == params:
                _band_vs_flops(ax, rs, tag, series)
        ax.set(
            title=size, xlabel="cumulative FLOPs (warm start included)", ylabel="test exact match", ylim=(-0.02, 1.02)
        )
        ax.legend(fontsize=8)
    _save(fig, path)


def figure_size(g, task: str, path: Path) -> None:
    """(b) final exact match and token accuracy against parameter count: exact and graded."""
    fig, axes = _panels(2, f"{task}: final accuracy vs model size (mean, 95% CI over seeds)")
    for ax, metric, label in zip(
        axes, (tags.EVAL_EXACT, tags.EVAL_TOKEN_ACCURACY), ("exact match", "token accuracy (graded)")
    ):
        for i, series in enumerate(dict.fromkeys(s for _, s in g)):
            for split, style in ((SPLIT, "-"), (EXTRA, "--")):  # one colour per series: test solid
                pts = [
                    (p, t_interval(np.array([r.final(tags.eval_tag(split, metric)) for r in rs])))
                    for (p, s), rs in g.items()
                    if s == series
                ]
                pts = [(p, m, h) for p, (m, h) in pts if np.isfinite(m)]
                if pts:
                    x, m, h = map(np.array, zip(*pts))
                    ax.errorbar(
                        x,
                        m,
                        yerr=np.where(np.isfinite(h), h, 0),
                        linestyle=style,
                        marker="o",
                        capsize=3,
                        color=f"C{i % 10}",
                        label=f"{series}, {split}",
                    )
        ax.set(xscale="log", xlabel="parameters", ylabel=label, title=label, ylim=(-0.02, 1.02))
        ax.legend(fontsize=8)
    _save(fig, path)


def figure_difficulty(g, sizes, task: str, path: Path) -> None:
    """(c) final exact match per difficulty; the training range shaded."""
    fig, axes = _panels(len(sizes), f"{task}: exact match per difficulty (mean, 95% CI over seeds)")
    for ax, (params, size) in zip(axes, sizes):
        span = None
        for (p, series), rs in g.items():
            if p != params:
                continue
            span = rs[0].train_range, rs[0].extrapolate_range
            ds = sorted(
                {
                    int(t.split("/")[2][1:])
                    for r in rs
                    for t in r.evals
                    if t.endswith("/exact_match") and t.count("/") == 3 and t.split("/")[1] in (SPLIT, EXTRA)
                }
            )
            split_of = {d: SPLIT if span[0][0] <= d <= span[0][1] else EXTRA for d in ds}
            vals = np.array([[r.final(tags.eval_tag(split_of[d], tags.EVAL_EXACT, d)) for d in ds] for r in rs])
            m, h = t_interval(vals)
            ax.errorbar(
                ds, m, yerr=np.where(np.isfinite(h), h, 0), marker="o", capsize=3, label=f"{series} ({len(rs)} seeds)"
            )
            ax.set_xticks(ds)
        if span:
            ax.axvspan(span[0][0] - 0.5, span[0][1] + 0.5, color="grey", alpha=0.15, label="training range")
            ax.axvline(span[1][0] - 0.5, color="grey", linestyle=":", label="extrapolation beyond")
        ax.set(
            title=size,
            xlabel=f"difficulty ({difficulty_label(task)})",
            ylabel="exact match",
            ylim=(-0.02, 1.02),
        )
        ax.legend(fontsize=8)
    _save(fig, path)


def figure_frontier(g, sizes, task: str, path: Path) -> bool:
    """(f) the held-out length frontier (``eval/frontier``) against cumulative FLOPs, mean and
    95 % band over seeds, the top of the training range marked; False when no run logged it."""
    tag = tags.EVAL_LENGTH_FRONTIER
    if not any(tag in r.evals for rs in g.values() for r in rs):
        return False
    fig, axes = _panels(len(sizes), f"{task}: length frontier vs compute (mean, 95% CI over seeds)")
    for ax, (params, size) in zip(axes, sizes):
        top = None
        for (p, series), rs in g.items():
            rs = [r for r in rs if tag in r.evals]
            if p != params or not rs:
                continue
            top = rs[0].train_range[1]
            _band_vs_flops(ax, rs, tag, series)
        if top is not None:
            ax.axhline(top, color="grey", linestyle=":", label="longest training length")
        ax.set(
            title=size,
            xlabel="cumulative FLOPs (warm start included)",
            ylabel=f"frontier ({difficulty_label(task)})",
        )
        ax.legend(fontsize=8)
    _save(fig, path)
    return True


def pass_curves(rs: list[RunRecord]) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """ks and [S, K] pass@k over the test problems of each run's final evaluation."""
    rows, n = [], None
    for r in rs:
        rec = r.problem_record(int(r.steps[-1]))
        if rec is None or f"{SPLIT}/correct" not in rec:
            return None
        c = rec[f"{SPLIT}/correct"]
        n = c.shape[1] if n is None else min(n, c.shape[1])
        rows.append(c)
    ks = np.unique(np.r_[2 ** np.arange(int(math.log2(n)) + 1), n])
    return ks, np.array([[pass_at_k(np.full(len(c), c.shape[1]), c.sum(1), int(k)).mean() for k in ks] for c in rows])


def figure_pass_k(g, sizes, task: str, path: Path) -> bool:
    """(d) pass@k against k per series (the warm start among them); False if no run sampled."""
    fig, axes = _panels(len(sizes), f"{task}: test pass@k at the end of training (mean, 95% CI over seeds)")
    drawn = False
    for ax, (params, size) in zip(axes, sizes):
        for (p, series), rs in g.items():
            got = pass_curves(rs) if p == params else None
            if got is not None:
                _band(ax, got[0], *t_interval(got[1]), f"{series} ({len(rs)} seeds)", marker="o")
                drawn = True
        ax.set(title=size, xlabel="k (samples per problem)", ylabel="pass@k", ylim=(-0.02, 1.02))
        ax.set_xscale("log", base=2)
        if ax.get_legend_handles_labels()[0]:  # a panel whose runs never sampled has no series
            ax.legend(fontsize=8)
    if drawn:
        _save(fig, path)
    else:
        _plt().close(fig)
    return drawn


# -- the report -------------------------------------------------------------------------------------


def _pm(m: float, h: float) -> str:
    return "—" if not np.isfinite(m) else f"{m:.3f}" + (f" ± {h:.3f}" if np.isfinite(h) else "")


def delta_cell(c: Comparison) -> str:
    """The Δ column: the difference, its interval and what the interval covers."""
    iv = c.interval
    if not np.isfinite(iv.lo):
        n = min(iv.seeds)
        return f"{iv.diff:+.3f} ({n} seed{'s' if n != 1 else ''}: no interval over seeds)"
    kind = f"t({iv.df:.0f}) paired" if iv.paired else f"t({iv.df:.1f}) Welch"
    return f"{iv.diff:+.3f} [{iv.lo:+.3f}, {iv.hi:+.3f}] {kind}" + ("" if iv.problems else ", seeds only")


def read_cell(c: Comparison) -> str:
    """The FLOPs each side was read at (this series / its reference)."""
    return " / ".join(f"{f:.3e}" + (" interp." if i else "") for f, i in zip(c.read, c.interpolated))


def table(g) -> list[str]:
    """(e) series x size: mean ± 95 % t interval over seeds, and the difference from
    supervised at equal FLOPs (``equal_flops_difference``) with the FLOPs each side was read at."""
    rows = [
        "| method | size | seeds | test exact match | test token acc. | extrapolate exact match | FLOPs | wall s "
        "(this run) | Δ exact match vs supervised at equal FLOPs [95 % interval] | read at FLOPs (this / "
        "supervised) | test sound exact match | length frontier | Δ frontier vs supervised (finals) |",
        "|" + "---|" * 13,
    ]
    for (params, series), rs in g.items():
        em, tok, ext = (
            t_interval(np.array([r.final(tags.eval_tag(s, m)) for r in rs]))
            for s, m in ((SPLIT, tags.EVAL_EXACT), (SPLIT, tags.EVAL_TOKEN_ACCURACY), (EXTRA, tags.EVAL_EXACT))
        )
        sound = t_interval(np.array([r.sound_final(SPLIT) for r in rs]))
        front = t_interval(np.array([r.final(tags.EVAL_LENGTH_FRONTIER) for r in rs]))
        own = series == rs[0].reference
        ref = g.get((params, rs[0].reference))
        cmp, at = ("reference", "") if own else ("—", "")
        dfront = "reference" if own else "—"
        if ref is not None and not own:
            c = equal_flops_difference(rs, ref)
            if c is not None:
                cmp, at = delta_cell(c), read_cell(c)
            f = frontier_difference(rs, ref)
            if f is not None:
                dfront = delta_cell(Comparison(f, math.nan, (math.nan, math.nan), (False, False)))
        unfinished = sum(not r.finished for r in rs)
        rows.append(
            f"| {series} | {rs[0].size} | {len(rs)}{f' ({unfinished} running)' if unfinished else ''} "
            f"| {_pm(*em)} | {_pm(*tok)} | {_pm(*ext)} | {np.mean([r.flops[-1] for r in rs]):.2e} "
            f"| {np.nanmean([r.elapsed_s for r in rs]):.0f} | {cmp} | {at} | {_pm(*sound)} "
            f"| {_pm(*front).replace('.000', '')} | {dfront} |"
        )
    return rows


def write_report(root: str | Path) -> Path:
    """Read every run under ``root`` and write ``report.md`` and the figures there."""
    root = Path(root)
    runs, status = read_experiment(root)
    g = groups(runs)
    sizes = list(dict.fromkeys((r.params, r.size) for r in sorted(runs, key=lambda r: r.params)))
    task = ", ".join(sorted({r.task for r in runs}))
    figure_compute(g, sizes, task, root / "compute.png")
    figure_size(g, task, root / "size.png")
    figure_difficulty(g, sizes, task, root / "difficulty.png")
    has_pass = figure_pass_k(g, sizes, task, root / "pass_at_k.png")
    has_frontier = figure_frontier(g, sizes, task, root / "frontier.png")
    problems = {
        len(rec[f"{SPLIT}/exact"])
        for r in runs
        if (rec := r.problem_record(int(r.steps[-1]))) is not None and f"{SPLIT}/exact" in rec
    }
    lines = [f"# {root.name}: {task}", "", status.headline(root), ""]
    lines += [
        "Every figure is the mean over seeds with a 95 % Student-t interval; the seeds of each line are in the "
        "legend and the table. FLOPs count training, generation, search and reward-net compute since random "
        "initialisation, a warm start's included.",
        f"Test problems per evaluation: {', '.join(map(str, sorted(problems))) or 'not recorded'}.",
        "",
        "## (e) Final accuracy per method and size",
        "",
        *table(g),
        "",
        "Δ: each method's test exact match minus supervised's at equal FLOPs F, the smallest final compute of "
        "any run of the two (a run that reached `train.flop_budget` counts its budget evaluation as at the "
        "budget). When every run reached the budget, each is read at its budget evaluation, and Δ is the "
        "difference of the finals; otherwise each run is read at F, interpolated linearly between the "
        "evaluations around it (`interp.`). The last column gives the FLOPs each side's readings stand at "
        "(mean over seeds). The interval is Student's t over seeds and test problems (`emergent/platform/"
        "stats.py`): the variance of the per-seed differences plus the problem effect, on the seeds' degrees "
        "of freedom: `paired` when seed s of the method started from seed s's shared warm start (t(S-1) on "
        "per-seed differences), `Welch` otherwise; `seeds only` where per-problem verdicts were not recorded. "
        "A row with one seed has no interval over seeds. ± is the 95 % t interval over seeds. Wall s is the "
        "run's own clock (a warm start's is its own row), on whatever the run shared its machine with. Sound "
        "exact match: the answer is right and every step of the scratchpad is true (tasks with a step checker; "
        "— elsewhere), whatever `task.check_steps` made the verifier accept. Length frontier (runs that log "
        "`eval/frontier`): the longest held-out length up to which every length reaches the run's "
        "`eval.frontier_threshold`; its Δ is the final frontier minus supervised's, Student's t over seeds "
        "(a frontier has no problems to resample), read at the finals: equal FLOPs when every run reached "
        "the budget.",
        "",
        "## (a) Test exact match vs compute",
        "",
        "![compute](compute.png)",
        "",
        "## (b) Emergence: exact match and token accuracy vs model size",
        "",
        "![size](size.png)",
        "",
        "## (c) Exact match per difficulty",
        "",
        "![difficulty](difficulty.png)",
        "",
        "## (d) pass@k",
        "",
        "![pass@k](pass_at_k.png)" if has_pass else "No run sampled completions: set `eval.pass_k` (e.g. [1,4,16,64]).",
        "",
    ]
    if has_frontier:
        lines += [
            "## (f) Length frontier vs compute",
            "",
            "The largest length L with exact match >= the run's `eval.frontier_threshold` at every "
            "held-out length up to L (test lengths, then the extrapolation lengths).",
            "",
            "![frontier](frontier.png)",
            "",
        ]
    out = root / "report.md"
    atomic_write(out, lambda f: f.write("\n".join(lines).encode()))
    return out
