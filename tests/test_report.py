"""The report's statistics and what it reads: t quantiles, the Δ interval over seeds and
problems (calibrated by simulation, so a missing seed term, a missing problem term or
unpaired problems fails), the equal-FLOPs rule, ``read_run``, ``pass_curves`` and ``table``
on synthetic runs written with the writers real runs use."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.stats as stats

from emergent import tags
from emergent.platform.config import load_config, to_yaml
from emergent.platform.metrics import pass_at_k
from emergent.platform.report import (
    RunRecord,
    equal_flops_difference,
    figure_frontier,
    groups,
    pass_curves,
    read_at,
    read_run,
    table,
)
from emergent.platform.stats import difference_interval, t_interval, t_quantile
from emergent.platform.tensorboard import TBLogger

# -- t quantiles and the interval over seeds --------------------------------------------------------


def test_t_quantile_matches_scipy_for_integer_and_fractional_df():
    for df in (1, 2, 2.5, 3, 3.7, 4, 9, 30, 31.5, 200, math.inf):
        for q in (0.975, 0.9):
            assert t_quantile(df, q) == pytest.approx(stats.t.ppf(q, df), abs=1e-9), (df, q)
    x = np.array([[0.9, 0.1], [0.8, 0.2], [1.0, 0.3]])
    mean, half = t_interval(x)
    assert mean == pytest.approx([0.9, 0.2])
    assert half == pytest.approx(stats.t.ppf(0.975, 2) * x.std(0, ddof=1) / np.sqrt(3))
    one_mean, one_half = t_interval(x[:1])  # one seed: a mean, no interval
    assert one_mean == pytest.approx([0.9, 0.1]) and np.isnan(one_half).all()


def test_with_one_value_per_run_the_interval_is_the_paired_or_welch_t_interval():
    a, b = np.array([[0.32], [0.335], [0.335]]), np.array([[0.195], [0.255], [0.295]])
    paired = difference_interval(a, b, paired=True)
    ci = stats.ttest_rel(a[:, 0], b[:, 0]).confidence_interval(0.95)
    assert (paired.lo, paired.hi) == pytest.approx((ci.low, ci.high)) and paired.df == 2 and not paired.problems
    welch = difference_interval(a, b, paired=False)
    ci = stats.ttest_ind(a[:, 0], b[:, 0], equal_var=False).confidence_interval(0.95)
    assert (welch.lo, welch.hi) == pytest.approx((ci.low, ci.high))
    # the README's seed values: Welch includes zero (the old bootstrap said [+0.020, +0.170])
    assert welch.diff == pytest.approx(0.0817, abs=1e-4) and welch.lo < 0 < welch.hi
    one = difference_interval(a[:1], b, paired=False)  # one seed: a difference, no interval
    assert one.diff == pytest.approx(0.32 - b.mean()) and math.isnan(one.lo) and one.seeds == (1, 3)


def simulate(rng, *, seeds, problems, seed_sd, difficulty_sd, interaction_sd, rho=0.0, effect=0.0):
    """Verdicts [S, P] of two methods on one test set, drawn on the logit scale: problem
    difficulty (shared), seed effects (correlated rho between seed s of each), a method x
    problem interaction; method A's logits shifted by ``effect``."""
    beta = -1.1 + difficulty_sd * rng.standard_normal(problems)
    shared = rng.standard_normal(seeds)
    out = []
    for m in range(2):
        u = seed_sd * (rho * shared + math.sqrt(1 - rho**2) * rng.standard_normal(seeds))
        g = interaction_sd * rng.standard_normal(problems)
        logit = beta[None, :] + u[:, None] + g[None, :] + (effect if m == 0 else 0.0)
        out.append((rng.random((seeds, problems)) < 1 / (1 + np.exp(-logit))).astype(float))
    return out


# Each scenario makes one variance term dominate, so an interval that leaves it out (or
# mis-estimates it) is miscalibrated there: (name, paired, simulate kwargs)
SCENARIOS = [
    ("seed effect", False, dict(seeds=3, problems=200, seed_sd=0.5, difficulty_sd=1.0, interaction_sd=0.0)),
    ("problem effect", False, dict(seeds=3, problems=40, seed_sd=0.02, difficulty_sd=1.0, interaction_sd=1.5)),
    (
        "shared warm starts",
        True,
        dict(seeds=3, problems=200, seed_sd=0.5, difficulty_sd=1.0, interaction_sd=0.0, rho=0.9),
    ),
    (
        "paired problems",
        True,
        dict(seeds=4, problems=100, seed_sd=0.05, difficulty_sd=3.0, interaction_sd=0.0, rho=0.9, effect=0.5),
    ),
]


@pytest.mark.parametrize("name,paired,kw", SCENARIOS, ids=[s[0] for s in SCENARIOS])
def test_the_interval_is_calibrated_where_each_variance_part_dominates(name, paired, kw):
    # The estimated standard error must match the actual spread of the difference over
    # repeats (new seeds, new test set, new verdicts), and under the null the interval
    # excludes zero at most about 5 % of the time (here: se ratio 0.94-1.05, 2-4 % false
    # positives). Mutants this fails, each made and seen failing: no seed term (seed effect:
    # ratio 0.07, 89 % false positives), no problem term (problem effect: ratio 0.69, 10.5 %),
    # problems unpaired, i.e. the problem term from each side's own spread (paired problems:
    # ratio 2.35).
    rng = np.random.default_rng(sum(map(ord, name)))
    diffs, ses, null_hits = [], [], 0
    for _ in range(400):
        a, b = simulate(rng, **kw)
        iv = difference_interval(a, b, paired=paired)
        diffs.append(iv.diff)
        ses.append(iv.se)
        if not kw.get("effect"):
            null_hits += iv.excludes_zero
    ratio = np.sqrt(np.mean(np.square(ses))) / np.std(diffs)
    assert 0.8 < ratio < 1.25, ratio
    if not kw.get("effect"):
        assert null_hits / 400 <= 0.08, null_hits / 400


# -- synthetic runs through the writers real runs use ------------------------------------------------

FLOPS_PER_STEP = 1e9


def write_run(
    root: Path,
    name: str,
    method: str,
    seed: int,
    evals: list[tuple[int, float, np.ndarray]],
    *,
    budget: float | None = None,
    correct: np.ndarray | None = None,
    finished: bool = True,
    d_model: int = 16,
    extra: tuple[str, ...] = (),
    frontier: list[float] | None = None,
) -> Path:
    """A run directory as ``Run`` writes one: the config text, each evaluation's scalars
    (``evals``: step, cumulative FLOPs, per-problem exact verdicts [P]) against steps and
    against FLOPs, its per-problem record, and hparams when ``finished``."""
    overrides = [
        f"train.method={method}",
        "model.n_layer=1",
        "model.n_head=2",
        f"model.d_model={d_model}",
        f"seed={seed}",
        f"run_name={name}",
        f"logdir={root.parent}",
        f"experiment={root.name}",
    ]
    overrides += ["train.batch_size=8"] if method == "supervised" else []
    overrides += [f"train.flop_budget={budget}"] if budget else []
    cfg = load_config(None, [*overrides, *extra])
    log, vs = TBLogger(cfg.run_dir), TBLogger(cfg.run_dir / tags.VS_FLOPS_DIR)
    log.text(tags.TEXT_CONFIG, f"```yaml\n{to_yaml(cfg)}\n```", 0)
    for i, (step, flops, exact) in enumerate(evals):
        scalars = {
            tags.eval_tag("test", "exact_match"): float(exact.mean()),
            tags.eval_tag("extrapolate", "exact_match"): float(exact.mean()) / 2,
        }
        if frontier is not None:
            scalars[tags.EVAL_LENGTH_FRONTIER] = frontier[i]
        log.scalars({**scalars, tags.PERF_ELAPSED_S: float(step)}, step)
        vs.scalars({tags.vs_flops_tag(k): v for k, v in scalars.items()}, int(flops // tags.VS_FLOPS_UNIT))
        record = {"test/exact": exact.astype(bool)}
        if correct is not None and i == len(evals) - 1:
            record["test/correct"] = correct
        (cfg.run_dir / tags.EVALS_DIR).mkdir(parents=True, exist_ok=True)
        np.savez(cfg.run_dir / tags.EVALS_DIR / f"step_{step:06d}.npz", **record)
    if finished:
        log.hparams({"train.method": method}, {tags.eval_tag("test", "exact_match"): 0.0})
    log.close()
    vs.close()
    return cfg.run_dir


def record(name, method, seed, flops, exact_rows, path, *, budget=None, shares_start=False) -> RunRecord:
    """A RunRecord as read_run would return it, with its per-problem verdicts written to ``path``."""
    steps = np.arange(len(flops)) * 100
    (path / tags.EVALS_DIR).mkdir(parents=True, exist_ok=True)
    for step, exact in zip(steps, exact_rows):
        np.savez(path / tags.EVALS_DIR / f"step_{step:06d}.npz", **{"test/exact": np.asarray(exact, dtype=bool)})
    em = np.array([np.mean(x) for x in exact_rows])
    return RunRecord(
        name,
        path,
        method,
        "supervised",
        method,
        "countdown",
        1000,
        "0.00M (L1 d16)",
        seed,
        True,
        steps,
        np.asarray(flops, dtype=float),
        {tags.eval_tag("test", "exact_match"): em},
        1.0,
        (1, 2),
        (3, 3),
        budget,
        shares_start,
    )


def test_equal_flops_reads_every_run_at_its_budget_evaluation_however_far_it_overshot(tmp_path):
    # supervised evaluates every 800 steps; the run that passes the budget by less overshoots
    # less. Reading at or below the smaller final (the old rule) reads supervised one
    # evaluation early (at 1.4e13) and sees a difference that is not there.
    rng = np.random.default_rng(0)
    early, final = rng.random(100) < 0.2, rng.random(100) < 0.3
    sup = [
        record(
            f"s{s}",
            "supervised",
            s,
            [0, 1.4e13, 1.5e13 + 1e9],
            [early, early, final],
            tmp_path / f"s{s}",
            budget=1.5e13,
        )
        for s in range(3)
    ]
    ei = [
        record(
            f"e{s}",
            "expert_iteration",
            s,
            [8e12, 1.2e13, 1.5e13 + 5e8],
            [early, early, final],
            tmp_path / f"e{s}",
            budget=1.5e13,
            shares_start=True,
        )
        for s in range(3)
    ]
    c = equal_flops_difference(ei, sup)
    assert c.flops == 1.5e13 and c.interval.diff == 0.0 and c.interpolated == (False, False)
    assert c.read == (1.5e13 + 5e8, 1.5e13 + 1e9) and c.interval.paired  # the FLOPs each side was read at
    assert c.interval.se == 0 and c.interval.lo == c.interval.hi == 0.0  # every seed the same: no spread


def test_without_a_common_budget_both_sides_are_interpolated_to_the_smaller_final(tmp_path):
    # a warm start ends at its own budget (8e12); supervised is read between its evaluations
    # at 7e12 and 9e12, verdict by verdict
    rng = np.random.default_rng(1)
    x, y, w = (rng.random(50) < p for p in (0.1, 0.4, 0.3))
    sup = [
        record(f"s{s}", "supervised", s, [0, 7e12, 9e12, 1.5e13], [x, x, y, y], tmp_path / f"s{s}", budget=1.5e13)
        for s in range(2)
    ]
    warm = [
        record(
            f"w{s}",
            "warm_start",
            s,
            [0, 4e12, 8e12 + 3e8],
            [x, x, w],
            tmp_path / f"w{s}",
            budget=8e12,
            shares_start=True,
        )
        for s in range(2)
    ]
    c = equal_flops_difference(warm, sup)
    assert c.flops == 8e12 and c.interpolated == (False, True) and c.read == (8e12 + 3e8, 8e12)
    assert c.interval.diff == pytest.approx(w.mean() - (0.5 * x.mean() + 0.5 * y.mean()))
    got = read_at(sup[0], 8e12)
    assert got.interpolated and got.verdicts == pytest.approx(0.5 * x + 0.5 * y)
    assert read_at(sup[0], 1.6e13) is None and read_at(warm[0], 8e12).flops == 8e12 + 3e8


def test_pairing_follows_shared_warm_starts_and_one_seed_has_no_interval(tmp_path):
    rng = np.random.default_rng(2)
    v = [rng.random(60) < 0.3 for _ in range(4)]
    sup = [record(f"s{s}", "supervised", s, [0, 1e13], [v[s], v[s]], tmp_path / f"s{s}", budget=1e13) for s in range(3)]
    scratch = [
        record(f"p{s}", "policy_gradient", s, [0, 1e13], [v[s], v[s + 1]], tmp_path / f"p{s}", budget=1e13)
        for s in range(3)
    ]
    assert not equal_flops_difference(scratch, sup).interval.paired  # no shared start: Welch
    one = equal_flops_difference(scratch[:1], sup)
    assert math.isnan(one.interval.lo) and one.interval.seeds == (1, 3)


def test_read_run_reads_what_a_run_logged(tmp_path):
    root = tmp_path / "exp"
    rng = np.random.default_rng(3)
    verdicts = [rng.random(30) < p for p in (0.1, 0.2, 0.5)]
    cell = {
        "name": "ei_seed1",
        "values": {"train.method": "expert_iteration", "seed": 1},
        "role": "run",
        "warm_start": "warm_start_seed1",
    }
    path = write_run(
        root,
        "ei_seed1",
        "expert_iteration",
        1,
        [(0, 8e12, verdicts[0]), (50, 1.2e13, verdicts[1]), (100, 1.5e13 + 7e8, verdicts[2])],
        budget=1.5e13,
    )
    r = read_run(path, cell)
    assert (r.method, r.series, r.reference, r.seed, r.task) == (
        "expert_iteration",
        "expert_iteration",
        "supervised",
        1,
        "addition",
    )
    assert r.finished and r.budget == 1.5e13 and r.shares_start
    assert list(r.steps) == [0, 50, 100]
    assert r.flops == pytest.approx([8e12, 1.2e13, 1.5e13 + 7e8], rel=1e-6)  # FLOPs to the MFLOP
    assert r.evals[tags.eval_tag("test", "exact_match")] == pytest.approx([v.mean() for v in verdicts])
    assert r.problem_record(50)["test/exact"].tolist() == verdicts[1].tolist()
    unfinished = read_run(write_run(root, "sup_seed1", "supervised", 1, [(0, 0.0, verdicts[0])], finished=False))
    assert not unfinished.finished and not unfinished.shares_start and unfinished.budget is None
    (tmp_path / "empty").mkdir()  # no evaluation logged yet
    assert read_run(tmp_path / "empty") is None


def test_pass_curves_are_pass_at_k_of_each_runs_last_evaluation(tmp_path):
    root = tmp_path / "exp"
    rng = np.random.default_rng(4)
    runs = []
    for seed in range(2):
        correct = rng.random((20, 8)) < 0.3
        path = write_run(
            root, f"r{seed}", "supervised", seed, [(0, 0.0, correct[:, 0]), (10, 1e9, correct[:, 1])], correct=correct
        )
        runs.append((read_run(path), correct))
    ks, curves = pass_curves([r for r, _ in runs])
    assert ks.tolist() == [1, 2, 4, 8]
    for (_, correct), row in zip(runs, curves):
        c = correct.sum(1)
        assert row[0] == pytest.approx(c.mean() / 8)  # pass@1: the mean share correct
        assert row[-1] == pytest.approx((c > 0).mean())  # pass@n: any correct
        assert row[2] == pytest.approx(np.mean([1 - math.comb(8 - x, 4) / math.comb(8, 4) for x in c]))
        assert row == pytest.approx([pass_at_k(np.full(20, 8), c, k).mean() for k in (1, 2, 4, 8)])
    assert pass_curves([read_run(write_run(root, "nosamples", "supervised", 0, [(0, 0.0, correct[:, 0])]))]) is None


def test_table_rows_carry_the_seed_effect_the_problem_effect_and_the_rule(tmp_path):
    # A known seed effect (supervised's seeds at 0.2 / 0.3 / 0.4 on average) and a known
    # problem effect (expert iteration solves the first half of the problems more often)
    root = tmp_path / "exp"
    rng = np.random.default_rng(5)
    P = 80
    boost = np.r_[np.full(P // 2, 0.3), np.zeros(P // 2)]
    runs = []
    for seed, base in enumerate((0.2, 0.3, 0.4)):
        sup = rng.random(P) < base
        ei = rng.random(P) < base + boost
        cells = [
            (
                {
                    "name": f"sup{seed}",
                    "values": {"train.method": "supervised", "seed": seed},
                    "role": "run",
                    "warm_start": None,
                },
                "supervised",
                [(0, 0.0, sup), (800, 1.5e13 + 2e9, sup)],
            ),
            (
                {
                    "name": f"ei{seed}",
                    "values": {"train.method": "expert_iteration", "seed": seed},
                    "role": "run",
                    "warm_start": f"warm{seed}",
                },
                "expert_iteration",
                [(0, 8e12, sup), (40, 1.5e13 + 1e9, ei)],
            ),
        ]
        if seed == 0:  # a series with one seed
            cells.append(
                (
                    {
                        "name": "pg0",
                        "values": {"train.method": "policy_gradient", "seed": 0},
                        "role": "run",
                        "warm_start": None,
                    },
                    "policy_gradient",
                    [(0, 0.0, sup), (40, 1.5e13, ei)],
                )
            )
        for cell, method, evals in cells:
            runs.append(read_run(write_run(root, cell["name"], method, seed, evals, budget=1.5e13), cell))
    g = groups(runs)
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in table(g)[2:]}
    sup = [r for r in runs if r.method == "supervised"]
    ei = [r for r in runs if r.method == "expert_iteration"]
    m, h = t_interval(np.array([r.final(tags.eval_tag("test", "exact_match")) for r in sup]))
    assert rows["supervised"][1] == "3" and rows["supervised"][2] == f"{m:.3f} ± {h:.3f}"
    assert rows["supervised"][7] == "reference"
    finals = lambda rs: np.stack([r.problem_record(int(r.steps[-1]))["test/exact"] for r in rs])  # noqa: E731
    iv = difference_interval(finals(ei), finals(sup), paired=True)
    assert rows["expert_iteration"][7] == f"{iv.diff:+.3f} [{iv.lo:+.3f}, {iv.hi:+.3f}] t(2) paired"
    assert iv.diff == pytest.approx(np.mean([r.final(tags.eval_tag("test", "exact_match")) for r in ei]) - m)
    assert rows["expert_iteration"][8] == f"{1.5e13 + 1e9:.3e} / {1.5e13 + 2e9:.3e}"
    assert rows["policy_gradient"][1] == "1" and rows["policy_gradient"][7].endswith("(1 seed: no interval over seeds)")


def test_sound_exact_match_is_read_or_derived_from_the_false_step_share(tmp_path):
    r = record("a", "supervised", 0, [1.0, 2.0], [[True, True, False, False]] * 2, tmp_path)
    assert np.isnan(r.sound_final("test"))  # no step checker: nothing to say
    fs = tags.eval_tag("test", tags.EVAL_FALSE_STEPS)
    derived = dataclasses.replace(r, evals={**r.evals, fs: np.array([0.0, 0.5])})
    assert derived.sound_final("test") == pytest.approx(0.5 * (1 - 0.5))  # half the right answers hold a false step
    logged = dataclasses.replace(
        derived, evals={**derived.evals, tags.eval_tag("test", tags.EVAL_SOUND_EXACT): np.array([0.1, 0.3])}
    )
    assert logged.sound_final("test") == 0.3
    # with task.check_steps the verdict already required every step: exact match is sound
    checked = dataclasses.replace(derived, check_steps=True)
    assert checked.sound_final("test") == 0.5


def test_a_position_scheme_is_a_series_of_its_size_compared_with_learned_supervised_and_its_frontier_shown(tmp_path):
    root = tmp_path / "exp"
    rng = np.random.default_rng(6)
    runs = []
    for seed in range(3):
        v = rng.random(20) < 0.5
        for name, method, extra, front in (
            ("sup", "supervised", (), [2, 3]),
            ("aba", "supervised", ("model.pos=abacus", "model.place_offset=4"), [2, 5 + seed]),
            ("sl", "self_label", ("model.pos=abacus",), [5, 7]),
        ):
            cell = {
                "name": f"{name}{seed}",
                "values": {"train.method": method, "model.pos": "x", "seed": seed},
                "role": "run",
                "warm_start": None,
            }
            runs.append(
                read_run(
                    write_run(
                        root, f"{name}{seed}", method, seed, [(0, 0.0, v), (10, 1e12, v)], extra=extra, frontier=front
                    ),
                    cell,
                )
            )
    g = groups(runs)
    assert len({p for p, _ in g}) == 1  # one size: a scheme's place table is not a size
    assert [s for _, s in g] == ["supervised", "self_label, pos=abacus", "supervised, pos=abacus, place_offset=4"]
    assert {r.reference for r in runs} == {"supervised"}
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in table(g)[2:]}
    m, h = t_interval(np.array([5.0, 6.0, 7.0]))
    assert rows["supervised, pos=abacus, place_offset=4"][-2] == f"{m:.3f} ± {h:.3f}".replace(".000", "")
    assert rows["self_label, pos=abacus"][-2] == "7 ± 0"
    assert rows["self_label, pos=abacus"][7].startswith("+0.000")  # compared with learned supervised
    # the frontier's difference from learned supervised (3 at every seed): Welch over seeds, as the
    # warm starts of a scheme are no prefix of a learned-position run
    iv = difference_interval(np.array([[5.0], [6.0], [7.0]]), np.array([[3.0]] * 3), paired=False)
    assert rows["supervised, pos=abacus, place_offset=4"][-1] == (
        f"{iv.diff:+.3f} [{iv.lo:+.3f}, {iv.hi:+.3f}] t({iv.df:.1f}) Welch, seeds only"
    )
    assert rows["supervised"][-1] == "reference"
    sizes = list(dict.fromkeys((r.params, r.size) for r in runs))
    assert (
        figure_frontier(g, sizes, "addition", tmp_path / "frontier.png") and (tmp_path / "frontier.png").stat().st_size
    )
    assert not figure_frontier(groups([r for r in runs if r.name == "none"]), sizes, "addition", tmp_path / "x.png")


def test_seeds_pair_only_with_a_reference_their_warm_starts_are_a_prefix_of(tmp_path):
    from dataclasses import replace

    from emergent.platform.report import pairs

    ei = [
        record(f"e{s}", "expert_iteration", s, [1.0, 2.0], [[True, False]] * 2, tmp_path, shares_start=True)
        for s in range(3)
    ]
    sup = [record(f"s{s}", "supervised", s, [1.0, 2.0], [[True, False]] * 2, tmp_path) for s in range(3)]
    assert pairs(ei, sup) and not pairs(sup, sup)  # supervised runs start from nothing shared
    assert not pairs([replace(r, scheme="pos=abacus") for r in ei], sup)  # an abacus warm start: no prefix
    assert not pairs(ei[:2], sup)


def test_a_figures_difficulty_axis_names_what_the_tasks_difficulty_counts():
    from emergent.platform.report import difficulty_label

    assert difficulty_label("addition") == "digits per operand"
    assert difficulty_label("countdown") == "numbers given"
    assert difficulty_label("addition, countdown") == "the task knob"  # a report over two tasks
