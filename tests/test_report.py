"""The report's statistics: the Student-t interval over seeds and the paired bootstrap over seeds and problems."""
import numpy as np
import pytest

from emergent.platform.report import T975, bootstrap_difference, t_interval


def test_t_interval_uses_students_quantiles():
    stats = pytest.importorskip("scipy.stats")
    for df in range(1, len(T975) + 1):
        assert T975[df - 1] == pytest.approx(stats.t.ppf(0.975, df), abs=1e-3)
    x = np.array([[0.9, 0.1], [0.8, 0.2], [1.0, 0.3]])
    mean, half = t_interval(x)
    assert mean == pytest.approx([0.9, 0.2])
    assert half == pytest.approx(stats.t.ppf(0.975, 2) * x.std(0, ddof=1) / np.sqrt(3), rel=1e-3)
    one_mean, one_half = t_interval(x[:1])  # one seed: a mean, no interval
    assert one_mean == pytest.approx([0.9, 0.1]) and np.isnan(one_half).all()


def test_bootstrap_interval_covers_the_difference_and_narrows_with_more_problems():
    rng = np.random.default_rng(0)

    def verdicts(p, seeds, problems):
        return (rng.random((seeds, problems)) < p).astype(float)

    a, b = verdicts(0.7, 5, 400), verdicts(0.5, 5, 400)
    lo, hi = bootstrap_difference(a, b)
    assert lo < a.mean() - b.mean() < hi and lo > 0.1 and hi < 0.3  # true difference 0.2
    wide = bootstrap_difference(verdicts(0.7, 5, 25), verdicts(0.5, 5, 25))
    assert wide[1] - wide[0] > 2 * (hi - lo)
    same = verdicts(0.6, 4, 300)
    lo0, hi0 = bootstrap_difference(same, same)  # no difference: an interval around 0
    assert lo0 <= 0 <= hi0
    assert bootstrap_difference(a, b) == (lo, hi)  # a fixed generator: the report is reproducible
