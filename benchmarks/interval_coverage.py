"""How often the report's Δ interval excludes zero when the two methods are equal.

A 95 % interval should exclude zero in at most 5 % of null comparisons. Each repeat draws a
test set of P problems and S seeds of two *equal* methods, scores every run on every
problem, and asks each interval whether the methods differ. Printed side by side:

- ``before``: the report's old interval, a percentile bootstrap resampling the S seeds of
  each side and the problems (paired), 2,000 rounds (copied here as it was);
- ``after``: ``emergent.platform.stats.difference_interval``, paired by seed where the
  scenario's seeds share a start, Welch otherwise;
- ``welch``: a Welch t interval on the per-seed means alone (a reference).

Runs are drawn on the logit scale: run (method m, seed s) solves problem p with
probability sigmoid(difficulty_p + seed_m,s + interaction_m,p). The seed effect is set so
that a run's test exact match has the sd the committed sweep showed across seeds
(supervised at 0.10M: 0.195 / 0.255 / 0.295, sd 0.05; at 0.41M: sd 0.10) around 0.25.
Scenarios:

- ``seeds``: independent seeds, no problem interaction (the issue's audit);
- ``shared``: seed s of both methods share a warm start (seed effects correlated 0.8),
  compared paired;
- ``problems``: both methods equal over the problem population but each better on its own
  problems (an interaction of sd 1 on the logit scale), compared unpaired.

    python benchmarks/interval_coverage.py [--repeats 2000] [--seeds 3] [--problems 200]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from emergent.platform.stats import difference_interval, t_quantile

LOGIT_BASE = float(np.log(0.25 / 0.75))
DIFFICULTY_SD = 1.0


def bootstrap_before(a: np.ndarray, b: np.ndarray, rng: np.random.Generator, rounds: int = 2000) -> tuple[float, float]:
    """The report's interval before this change: resample seeds of each side and problems."""

    def weights(n: int) -> np.ndarray:
        w = np.zeros((rounds, n))
        np.add.at(w, (np.arange(rounds)[:, None], rng.integers(0, n, (rounds, n))), 1.0 / n)
        return w

    problems = weights(a.shape[1])
    diff = np.einsum("bs,sp,bp->b", weights(len(a)), a, problems) - np.einsum(
        "bs,sp,bp->b", weights(len(b)), b, problems
    )
    lo, hi = np.percentile(diff, [2.5, 97.5])
    return float(lo), float(hi)


def welch(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    ma, mb = a.mean(1), b.mean(1)
    va, vb = ma.var(ddof=1) / len(ma), mb.var(ddof=1) / len(mb)
    df = (va + vb) ** 2 / (va**2 / (len(ma) - 1) + vb**2 / (len(mb) - 1))
    h = t_quantile(df) * np.sqrt(va + vb)
    d = ma.mean() - mb.mean()
    return d - h, d + h


def seed_sd_for(target: float, problems: int, rng: np.random.Generator) -> float:
    """The logit-scale seed sd at which a run's exact match has sd ``target`` (binomial noise
    of ``problems`` verdicts included), by bisection on a Monte Carlo estimate."""
    z = rng.standard_normal(20000)
    beta = LOGIT_BASE + DIFFICULTY_SD * rng.standard_normal(problems)

    def sd(tau: float) -> float:
        p = 1 / (1 + np.exp(-(beta[None, :] + tau * z[:, None] / 1.0)))  # [runs, P]
        acc = p.mean(1)
        return float(np.sqrt(acc.var() + (p * (1 - p)).mean(1).mean() / problems))

    lo, hi = 0.0, 5.0
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if sd(mid) < target else (lo, mid)
    return (lo + hi) / 2


def draw(rng, seeds: int, problems: int, tau: float, rho: float, interaction: float):
    """Verdicts [S, P] of two equal methods."""
    beta = LOGIT_BASE + DIFFICULTY_SD * rng.standard_normal(problems)  # the test set
    shared = rng.standard_normal(seeds)
    u = [tau * (rho * shared + np.sqrt(1 - rho**2) * rng.standard_normal(seeds)) for _ in range(2)]
    out = []
    for m in range(2):
        g = interaction * rng.standard_normal(problems)  # method x problem
        p = 1 / (1 + np.exp(-(beta[None, :] + u[m][:, None] + g[None, :])))
        out.append((rng.random((seeds, problems)) < p).astype(np.float64))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=2000)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--problems", type=int, default=200)
    ap.add_argument("--rng", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.rng)
    print(
        f"null comparisons of two equal methods: {args.repeats} repeats, {args.seeds} seeds per method, "
        f"{args.problems} problems; share of 95 % intervals that exclude zero (nominal 0.05)"
    )
    print(f"{'scenario':<34} {'seed sd':>7} {'before':>7} {'after':>7} {'welch':>7} {'after width':>11} {'s':>5}")
    for name, target, rho, inter, paired in (
        ("seeds (independent)", 0.05, 0.0, 0.0, False),
        ("seeds (independent), 2x spread", 0.10, 0.0, 0.0, False),
        ("shared warm start (rho 0.8), paired", 0.05, 0.8, 0.0, True),
        ("shared warm start, 2x spread", 0.10, 0.8, 0.0, True),
        ("independent, compared paired", 0.05, 0.0, 0.0, True),
        ("problem interaction sd 1", 0.05, 0.0, 1.0, False),
        ("problem interaction, 2x spread", 0.10, 0.0, 1.0, False),
        ("problem interaction, shared, paired", 0.05, 0.8, 1.0, True),
    ):
        t0 = time.perf_counter()
        tau = seed_sd_for(target, args.problems, rng)
        hits = np.zeros(3)
        width = 0.0
        for _ in range(args.repeats):
            a, b = draw(rng, args.seeds, args.problems, tau, rho, inter)
            after = difference_interval(a, b, paired=paired)
            for i, (lo, hi) in enumerate((bootstrap_before(a, b, rng), (after.lo, after.hi), welch(a, b))):
                hits[i] += lo > 0 or hi < 0
            width += (after.hi - after.lo) / args.repeats
        rate = hits / args.repeats
        print(
            f"{name:<34} {target:>7.2f} {rate[0]:>7.3f} {rate[1]:>7.3f} {rate[2]:>7.3f} {width:>11.3f} "
            f"{time.perf_counter() - t0:>5.0f}",
            flush=True,
        )
    print(f"binomial sd of a rate near 0.05 over {args.repeats} repeats: {np.sqrt(0.05 * 0.95 / args.repeats):.3f}")


if __name__ == "__main__":
    main()
