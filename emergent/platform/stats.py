"""The report's statistics: Student-t intervals over seeds, and the difference of two
methods over seeds and problems.

Pure numpy. Every run of a sweep is scored on the same test problems, so a difference of
two methods has three sources of noise: which seeds were trained (a seed effect), which
problems make the test set (a problem effect: a method may be better on some problems and
worse on others), and the run-by-problem draw itself. With ``d[s, p]`` the verdict of
seed s of method A minus that of seed s of method B on problem p (a two-way layout
without replication),

    Var(mean d) = var_seed / S + var_problem / P + var_residual / (S P),

which ``difference_interval`` estimates unbiasedly: the variance of the per-seed
differences over S (the seed and residual parts), plus the problem part from the
per-problem differences with the residual's share taken out (the two-way ANOVA mean
squares). The interval is Student's t on the seed part's degrees of freedom (S - 1 when
seeds pair, Welch's otherwise): at 3 seeds that is t(2) = 4.30, which a bootstrap over
three values cannot know (it resamples 3 numbers and behaves like a normal interval with
a variance biased low by 2/3). ``benchmarks/interval_coverage.py`` measures how often
each interval excludes zero when the methods are equal.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np


@functools.lru_cache(maxsize=4096)
def t_quantile(df: float, q: float = 0.975) -> float:
    """Student's t quantile for any real ``df`` > 0 (Welch's are fractional); inf df: the
    normal's. The density is integrated (Simpson, 2,001 points) and the quantile found by
    bisection: within 1e-10 of scipy's for df from 0.8 to 1e3."""
    if not 0.5 < q < 1:
        raise ValueError(f"q must be in (0.5, 1); got {q}")
    if not math.isfinite(df):
        return NormalDist().inv_cdf(q)
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def mass(t: float) -> float:  # P(0 < T < t)
        x = np.linspace(0.0, t, 2001)
        y = np.exp(log_c - (df + 1) / 2 * np.log1p(x * x / df))
        h = t / 2000
        return h / 3 * (y[0] + y[-1] + 4 * y[1:-1:2].sum() + 2 * y[2:-1:2].sum())

    lo, hi = 0.0, 1.0
    while mass(hi) < q - 0.5:
        lo, hi = hi, 2 * hi
    for _ in range(48):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mass(mid) < q - 0.5 else (lo, mid)
    return (lo + hi) / 2


def t_interval(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and 95 % half-width over axis 0 (the seeds). x: [S, ...]. Half-width nan for S < 2."""
    x = np.asarray(x, dtype=np.float64)
    s = x.shape[0]
    if s < 2:
        return x.mean(0), np.full(x.shape[1:], np.nan)
    return x.mean(0), t_quantile(s - 1) * x.std(0, ddof=1) / math.sqrt(s)


@dataclass(frozen=True)
class Interval:
    """A difference of means with its 95 % interval (lo, hi nan when either side has one seed)."""

    diff: float
    lo: float
    hi: float
    se: float  # standard error of diff (nan with one seed)
    df: float  # degrees of freedom of the t quantile
    paired: bool  # seeds paired (seed s of each side shares its start)
    problems: bool  # the problem part is in (per-problem verdicts on the same problems)
    seeds: tuple[int, int]  # seeds on each side

    @property
    def excludes_zero(self) -> bool:
        return bool(self.lo > 0 or self.hi < 0)


def _residual_ms(x: np.ndarray) -> float:
    """Residual mean square of a two-way table x [S, P] (rows and columns removed): the
    run-by-problem noise of one verdict."""
    s, p = x.shape
    resid = x - x.mean(1, keepdims=True) - x.mean(0, keepdims=True) + x.mean()
    return float((resid**2).sum() / ((s - 1) * (p - 1)))


def difference_interval(a: np.ndarray, b: np.ndarray, *, paired: bool) -> Interval:
    """mean(a) - mean(b) with a 95 % interval over seeds and problems.

    a: [Sa, P], b: [Sb, P] verdicts (or any per-problem scores) of every seed of each side on
    the same P problems, in seed order; P = 1 when only each run's mean is known (then
    the interval is over seeds only). ``paired``: row s of a and row s of b share their
    start (the same warm start, or one is the other's prefix): the per-seed differences
    carry the seed part (S - 1 df). Unpaired: Welch over the two sides' seed means.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"verdicts must be [S, P] on the same problems; got {a.shape} and {b.shape}")
    (sa, p), sb = a.shape, len(b)
    if paired and sa != sb:
        raise ValueError(f"paired seeds need as many on each side; got {sa} and {sb}")
    diff = float(a.mean() - b.mean())
    if sa < 2 or sb < 2:
        return Interval(diff, math.nan, math.nan, math.nan, math.nan, paired, p > 1, (sa, sb))
    if paired:
        d = a - b  # [S, P]
        seed_var = d.mean(1).var(ddof=1) / sa  # var_seed / S + var_residual / (S P)
        df = sa - 1.0
        noise = _residual_ms(d) / sa if p > 1 else 0.0  # the residual's share of a problem mean
    else:
        va, vb = a.mean(1).var(ddof=1) / sa, b.mean(1).var(ddof=1) / sb
        seed_var = va + vb
        df = seed_var**2 / (va**2 / (sa - 1) + vb**2 / (sb - 1)) if seed_var > 0 else sa + sb - 2.0
        noise = _residual_ms(a) / sa + _residual_ms(b) / sb if p > 1 else 0.0
    problem_var = 0.0
    if p > 1:  # the per-problem differences of seed means vary by the problem effect plus noise
        problem_var = max(0.0, (a.mean(0) - b.mean(0)).var(ddof=1) - noise) / p
    se = math.sqrt(seed_var + problem_var)
    half = t_quantile(df) * se
    return Interval(diff, diff - half, diff + half, se, df, paired, p > 1, (sa, sb))
