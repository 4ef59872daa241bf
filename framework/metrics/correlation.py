"""Pearson and Spearman correlation with two-sided p-values, without scipy (methods.md §4: does the
entropy an encoder measures correlate with reconstruction quality?).

    rho, p = spearman(entropies, f1_scores)    # ranks (ties averaged), then Pearson on the ranks
    r, p = pearson(x, y)

The p-value is the usual one for H0: no correlation: t = r·sqrt((n-2) / (1-r²)) follows Student's t
with n-2 degrees of freedom, and p = P(|T| >= |t|) = I_{df/(df+t²)}(df/2, 1/2), the regularised
incomplete beta function, computed here by its continued fraction. These are the values
``scipy.stats.pearsonr`` and ``scipy.stats.spearmanr`` report (two-sided).
"""

from __future__ import annotations

import math
from typing import Sequence

_EPS = 1e-15
_TINY = 1e-300
_MAX_ITER = 500


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of I_x(a, b) (modified Lentz), converging fast for x < (a+1)/(a+b+2).

    I_x(a, b) = x^a (1-x)^b / (a B(a, b)) · 1 / (1 + d_1 / (1 + d_2 / (1 + ...))) with
    d_{2m+1} = -(a+m)(a+b+m) x / ((a+2m)(a+2m+1)) and d_{2m} = m(b-m) x / ((a+2m-1)(a+2m))."""
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    f = d
    for m in range(1, _MAX_ITER + 1):
        for coeff in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                      -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + coeff * d
            d = 1.0 / (d if abs(d) > _TINY else _TINY)
            c = 1.0 + coeff / c
            c = c if abs(c) > _TINY else _TINY
            f *= c * d
        if abs(c * d - 1.0) < _EPS:
            return f
    raise ArithmeticError(f"the incomplete beta continued fraction did not converge for a={a}, b={b}, x={x}")


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b) = B(x; a, b) / B(a, b) for a, b > 0 and 0 <= x <= 1."""
    if a <= 0 or b <= 0:
        raise ValueError(f"the incomplete beta needs a, b > 0 (got a={a}, b={b})")
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"the incomplete beta needs 0 <= x <= 1 (got x={x})")
    if x == 0.0 or x == 1.0:
        return x
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    # the symmetry I_x(a, b) = 1 - I_{1-x}(b, a) keeps the fraction in its fast-converging range
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, 1.0 - x) / b


def _two_sided_p(r: float, n: int) -> float:
    """P(|T| >= |t|) for t = r·sqrt((n-2)/(1-r²)), T ~ Student's t with n-2 degrees of freedom."""
    df = n - 2
    if abs(r) >= 1.0:
        return 0.0
    t2 = r * r * df / (1.0 - r * r)
    return regularized_incomplete_beta(df / 2.0, 0.5, df / (df + t2))


def _checked(x: Sequence[float], y: Sequence[float]) -> tuple[list[float], list[float]]:
    xs, ys = [float(v) for v in x], [float(v) for v in y]
    if len(xs) != len(ys):
        raise ValueError(f"x has {len(xs)} values but y has {len(ys)}. Fix: pass paired samples of equal length")
    if len(xs) < 3:
        raise ValueError(f"a correlation test needs at least 3 pairs (got {len(xs)}): with n-2 < 1 degrees of "
                         "freedom there is no p-value. Fix: collect more samples")
    if not all(math.isfinite(v) for v in xs + ys):
        raise ValueError("x or y holds NaN or infinite values. Fix: drop those pairs before correlating")
    return xs, ys


def _pearson_r(xs: list[float], ys: list[float]) -> float:
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    dx, dy = [v - mx for v in xs], [v - my for v in ys]
    sxx, syy = sum(v * v for v in dx), sum(v * v for v in dy)
    if sxx == 0.0 or syy == 0.0:
        which = "x" if sxx == 0.0 else "y"
        raise ValueError(f"{which} is constant, so its correlation is undefined. Fix: correlate a quantity that "
                         "varies across the samples (or report no correlation test for it)")
    r = sum(a * b for a, b in zip(dx, dy)) / math.sqrt(sxx * syy)
    return max(-1.0, min(1.0, r))


def rankdata(values: Sequence[float]) -> list[float]:
    """Ranks 1..n; tied values all get the mean of the ranks they span (scipy's method='average')."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        mean_rank = (i + j) / 2.0 + 1.0
        for k in range(i, j + 1):
            ranks[order[k]] = mean_rank
        i = j + 1
    return ranks


def pearson(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """(r, two-sided p-value) of the Pearson correlation of paired samples x, y (n >= 3, neither constant)."""
    xs, ys = _checked(x, y)
    r = _pearson_r(xs, ys)
    return r, _two_sided_p(r, len(xs))


def spearman(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """(rho, two-sided p-value): Pearson's r of the ranks (ties averaged), p from the t distribution."""
    xs, ys = _checked(x, y)
    rho = _pearson_r(rankdata(xs), rankdata(ys))
    return rho, _two_sided_p(rho, len(xs))
