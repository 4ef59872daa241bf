"""spearman / pearson (framework/metrics/correlation.py) against scipy.stats on fixed examples."""

import pytest
import scipy.special
import scipy.stats

from framework.metrics.correlation import pearson, rankdata, regularized_incomplete_beta, spearman

EXAMPLES = {
    "n3": ([1.0, 2.0, 3.5], [2.0, 1.0, 4.0]),
    "negative": ([3.1, 2.2, 5.0, 0.4, 1.7, 4.4, 2.9], [0.2, 0.5, 0.1, 0.9, 0.7, 0.15, 0.3]),
    "ties": ([1, 2, 2, 3, 4, 4, 4, 5, 6, 7], [2, 1, 3, 3, 5, 4, 6, 6, 8, 7]),
    "weak": ([0.3, -1.2, 2.2, 0.9, -0.4, 1.1, 0.0, -2.0, 1.7, 0.5, -0.8, 0.2],
             [1.0, 0.1, -0.3, 0.8, 0.4, -1.1, 0.6, 0.2, 0.9, -0.5, 0.3, 0.0]),
    "perfect": ([1, 2, 3, 4, 5], [2, 4, 6, 8, 10]),
    "larger": ([(i * 37) % 101 / 10 for i in range(60)], [((i * 37) % 101) ** 0.5 + (i % 7) for i in range(60)]),
}


@pytest.mark.parametrize("name", EXAMPLES)
def test_matches_scipy(name):
    x, y = EXAMPLES[name]
    rho, p = spearman(x, y)
    ref = scipy.stats.spearmanr(x, y)
    assert rho == pytest.approx(ref.statistic, abs=1e-12)
    assert p == pytest.approx(ref.pvalue, rel=1e-8, abs=1e-14)
    r, p = pearson(x, y)
    ref = scipy.stats.pearsonr(x, y)
    assert r == pytest.approx(ref.statistic, abs=1e-12)
    assert p == pytest.approx(ref.pvalue, rel=1e-8, abs=1e-14)


def test_ranks_average_ties():
    assert rankdata([10, 20, 20, 5, 20]) == [2.0, 4.0, 4.0, 1.0, 4.0]
    assert rankdata([3, 1, 2]) == list(scipy.stats.rankdata([3, 1, 2]))


@pytest.mark.parametrize("a,b,x", [(0.5, 0.5, 0.3), (2.0, 3.0, 0.9), (30.0, 0.5, 0.97), (1.0, 1.0, 0.42)])
def test_incomplete_beta_matches_scipy(a, b, x):
    assert regularized_incomplete_beta(a, b, x) == pytest.approx(scipy.special.betainc(a, b, x), rel=1e-10)


@pytest.mark.parametrize("fn", [spearman, pearson])
def test_errors_name_the_fix(fn):
    with pytest.raises(ValueError, match="at least 3 pairs"):
        fn([1, 2], [3, 4])
    with pytest.raises(ValueError, match="x is constant"):
        fn([1, 1, 1, 1], [1, 2, 3, 4])
    with pytest.raises(ValueError, match="y is constant"):
        fn([1, 2, 3, 4], [5, 5, 5, 5])
    with pytest.raises(ValueError, match="equal length"):
        fn([1, 2, 3], [1, 2, 3, 4])
    with pytest.raises(ValueError, match="NaN"):
        fn([1, 2, float("nan")], [1, 2, 3])
