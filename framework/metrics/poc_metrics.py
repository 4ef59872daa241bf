"""Metrics and the ratio search of PoC, performance-oriented context compression (methods.md §3).

PoC's user gives a performance *floor* instead of a compression ratio; a predictor estimates the
*retention* (task score at ratio r / score uncompressed) of one context at candidate ratios
r = |compressed| / |original| in (0, 1], and the search picks the smallest ratio whose predicted
retention still meets the floor.

    ppe(pred, target)                                  # Performance Prediction Error (an MSE)
    curve = mean_retention_curve(grid, retentions)     # the context-agnostic predictor
    curve(torch.tensor([0.3, 0.55]))                   # interpolated between the grid ratios
    r = two_stage_search(curve, floor=0.9)             # smallest ratio predicted to keep 90%
    performance_at_ratio(floors, ratios, scores)       # P@R: area under score vs compression

Pure Python/torch; nothing here trains or loads a model.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

Predict = Callable[[torch.Tensor], torch.Tensor]


def _as_tensor(x, name: str) -> torch.Tensor:
    t = torch.as_tensor(x, dtype=torch.float64) if not isinstance(x, torch.Tensor) else x.detach().double().cpu()
    if t.numel() == 0:
        raise ValueError(f"{name} is empty. Fix: pass at least one value")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} holds NaN or infinite values. Fix: drop the (context, ratio) pairs that have no "
                         "measured score")
    return t


def ppe(predicted, target) -> float:
    """Performance Prediction Error: the mean squared error between predicted and measured retention
    over all (context, ratio) pairs, i.e. ``mean((predicted - target) ** 2)`` over every element.

    Both are tensors or nested lists of the same shape (typically [N contexts, R ratios])."""
    p, t = _as_tensor(predicted, "predicted"), _as_tensor(target, "target")
    if p.shape != t.shape:
        raise ValueError(f"predicted has shape {tuple(p.shape)} but target has {tuple(t.shape)}. Fix: predict "
                         "exactly the (context, ratio) pairs that were measured, in the same order")
    return float(((p - t) ** 2).mean())


class MeanRetentionCurve:
    """The context-agnostic predictor: one retention curve for every input.

    ``values[j]`` is the mean retention at ``ratios[j]`` over the training samples. Calling the curve
    on ratios evaluates it by linear interpolation between neighbouring grid ratios; a ratio below
    the smallest (above the largest) grid ratio gets the value at that end (constant extrapolation).
    Nothing is assumed about ratio 1 (retention 1 there is not forced): the data decide."""

    def __init__(self, ratios: torch.Tensor, values: torch.Tensor):
        self.ratios, self.values = ratios, values

    def __call__(self, r) -> torch.Tensor:
        """Retention at ratio(s) r (a float or a tensor of any shape; returns float64 of r's shape)."""
        q = torch.as_tensor(r, dtype=torch.float64)
        x, y = self.ratios, self.values
        if x.numel() == 1:
            return y.expand(q.shape).clone()
        qc = q.clamp(float(x[0]), float(x[-1]))
        hi = torch.searchsorted(x, qc.reshape(-1), right=False).clamp(1, x.numel() - 1)
        lo = hi - 1
        x0, x1, y0, y1 = x[lo], x[hi], y[lo], y[hi]
        w = (qc.reshape(-1) - x0) / (x1 - x0)
        return (y0 + w * (y1 - y0)).reshape(q.shape)

    def __repr__(self) -> str:
        pairs = ", ".join(f"{float(a):.3g}:{float(b):.3g}" for a, b in zip(self.ratios, self.values))
        return f"MeanRetentionCurve({pairs})"


def mean_retention_curve(ratios, retentions) -> MeanRetentionCurve:
    """The mean retention at each candidate ratio over the training samples.

    ratios: [R] the grid ratios the samples were measured at (distinct, any order; sorted here).
    retentions: [N, R] retention of sample i at ratios[j].
    Returns a callable :class:`MeanRetentionCurve` (``.ratios`` sorted, ``.values`` = column means)."""
    x, y = _as_tensor(ratios, "ratios").reshape(-1), _as_tensor(retentions, "retentions")
    if y.dim() != 2 or y.shape[1] != x.numel():
        raise ValueError(f"retentions has shape {tuple(y.shape)}; expected [N samples, {x.numel()} ratios]. "
                         "Fix: one row per training sample, one column per grid ratio")
    order = torch.argsort(x)
    x, values = x[order], y.mean(dim=0)[order]
    if x.numel() > 1 and bool((x[1:] == x[:-1]).any()):
        raise ValueError(f"ratios {x.tolist()} repeat a value. Fix: merge the columns of a repeated ratio")
    return MeanRetentionCurve(x, values)


def _smallest_meeting(predict: Predict, grid: torch.Tensor, floor: float) -> int | None:
    pred = torch.as_tensor(predict(grid)).detach().double().cpu().reshape(-1)
    if pred.numel() != grid.numel():
        raise ValueError(f"predict returned {pred.numel()} values for {grid.numel()} ratios. Fix: return one "
                         "predicted retention per input ratio, shape [R]")
    ok = (pred >= floor).nonzero().flatten()
    return int(ok[0]) if ok.numel() else None


def two_stage_search(predict: Predict, floor: float, points: int = 18) -> float:
    """The smallest ratio whose predicted retention is >= floor, searched on two grids.

    With n = ``points`` and step h = 1 / (n + 1):

    - stage 1 (coarse): the ratios k·h for k = 1..n, plus k = n + 1, i.e. ratio 1.0 ("no compression"),
      in one ``predict`` call of n + 1 ratios. Let r1 = k*·h be the smallest one meeting the floor.
      If none does, the answer is 1.0 (no compression; its prediction may be below the floor).
    - stage 2 (fine): inside the bracket (r0, r1] with r0 = (k* - 1)·h (the previous grid point,
      which failed; 0 when k* = 1), the n ratios r0 + j·h² for j = 1..n, in one ``predict`` call. The
      answer is the smallest of them meeting the floor, or r1 itself when none does.

    Every candidate is then a multiple of h² = 1/(n+1)² (1/361 for the default 18 points); for a
    prediction that is non-decreasing in r the answer lies within h² above the true smallest ratio
    meeting the floor. The returned ratio always meets the floor under ``predict``, except the
    fallback 1.0. ``predict(ratios: Tensor[R] float64) -> Tensor[R]``."""
    if points < 1:
        raise ValueError(f"points={points}; the search needs at least one grid point per stage. Fix: points=18")
    h = 1.0 / (points + 1)
    coarse = torch.arange(1, points + 2, dtype=torch.float64) * h
    coarse[-1] = 1.0
    k = _smallest_meeting(predict, coarse, floor)
    if k is None:
        return 1.0
    lo, hi = (float(coarse[k - 1]) if k > 0 else 0.0), float(coarse[k])
    fine = lo + torch.arange(1, points + 1, dtype=torch.float64) * ((hi - lo) / (points + 1))
    j = _smallest_meeting(predict, fine, floor)
    return float(fine[j]) if j is not None else hi


def performance_at_ratio(floors: Sequence[float], achieved_ratios: Sequence[float],
                         achieved_scores: Sequence[float]) -> float:
    """P@R, the area under the performance-vs-compression curve traced by sweeping the floor.

    For each floor f_i, ``achieved_ratios[i]`` is the (mean) ratio the search chose and
    ``achieved_scores[i]`` the (mean) task score or retention obtained at it. With
    x_i = 1 - achieved_ratios[i] (compression, in [0, 1]) and y_i = achieved_scores[i]:

    1. points sharing the same x are merged into one whose y is their mean;
    2. the points are sorted by x;
    3. P@R = trapezoid rule over them, sum_i (x_{i+1} - x_i) · (y_i + y_{i+1}) / 2.

    The x axis is the absolute compression axis [0, 1] (no division by the covered span, no
    extrapolation beyond the outermost points), so P@R lies in [0, max score] and a sweep that
    reaches further compression at the same score scores higher. Compare methods on the same
    floors; a sweep including floor 0 (smallest ratio, x near 1) and a floor no prediction meets
    (ratio 1, x = 0) covers almost the whole axis. A single distinct x gives 0. ``floors`` only
    fixes the number of points here (each floor's point counts once)."""
    f = _as_tensor(floors, "floors").reshape(-1)
    r = _as_tensor(achieved_ratios, "achieved_ratios").reshape(-1)
    s = _as_tensor(achieved_scores, "achieved_scores").reshape(-1)
    if not (f.numel() == r.numel() == s.numel()):
        raise ValueError(f"{f.numel()} floors, {r.numel()} ratios and {s.numel()} scores. Fix: one achieved ratio "
                         "and one score per floor")
    if bool(((r < 0) | (r > 1)).any()):
        raise ValueError(f"achieved_ratios {r.tolist()} leave [0, 1]. Fix: pass |compressed| / |original|")
    x = 1.0 - r
    xs, inverse = torch.unique(x, sorted=True, return_inverse=True)
    ys = torch.zeros_like(xs).index_add_(0, inverse, s) / torch.bincount(inverse, minlength=xs.numel()).double()
    if xs.numel() < 2:
        return 0.0
    return float(((xs[1:] - xs[:-1]) * (ys[1:] + ys[:-1]) / 2).sum())


def paired_ppe_difference(predicted_a, predicted_b, target) -> dict:
    """How much lower predictor a's squared error is than b's, paired by context: the mean over
    contexts of (a's mean squared error on the context - b's), which equals PPE(a) - PPE(b), its
    standard error (std / sqrt(N)), and the share of contexts where a's error is the lower one."""
    a, b, t = (_as_tensor(x, name) for x, name in ((predicted_a, "predicted_a"), (predicted_b, "predicted_b"),
                                                    (target, "target")))
    if not (a.shape == b.shape == t.shape) or a.dim() != 2 or a.shape[0] < 2:
        raise ValueError(f"need [N >= 2 contexts, R ratios] for both predictions and the target; got "
                         f"{tuple(a.shape)}, {tuple(b.shape)}, {tuple(t.shape)}")
    diff = ((a - t) ** 2).mean(dim=1) - ((b - t) ** 2).mean(dim=1)
    return {"difference": float(diff.mean()), "stderr": float(diff.std() / diff.numel() ** 0.5),
            "share_contexts_a_lower": float((diff < 0).double().mean()), "contexts": int(diff.numel())}
