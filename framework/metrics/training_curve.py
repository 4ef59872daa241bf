"""A training loss curve summarised for a JSON report."""

from __future__ import annotations

import math


def summarize_curve(losses: list, points: int = 20) -> dict:
    """Training loss as `points` block means (with the step each block ends at), plus first / last."""
    n = len(losses)
    if n == 0:
        return {"curve": []}
    blocks = []
    for i in range(min(points, n)):
        lo, hi = i * n // min(points, n), (i + 1) * n // min(points, n)
        blocks.append({"step": hi, "mean_loss": round(sum(losses[lo:hi]) / (hi - lo), 4)})
    tail = losses[-max(1, n // 10):]
    finite = [x for x in losses if math.isfinite(x)]
    return {"first_loss": round(losses[0], 4), "final_loss_mean_last_10pct": round(sum(tail) / len(tail), 4),
            "min_loss": round(min(finite), 4) if finite else None, "nonfinite_steps": n - len(finite),
            "curve": blocks}
