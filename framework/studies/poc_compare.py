"""The comparison PoC reports: the context-aware predictor against the context-agnostic mean retention
curve, on held-out contexts of a label cache.

    summary = compare(predictor, cache, validation_fraction=0.1, floors=FLOORS)
    summary["ppe"]         # {"context_aware": ..., "context_agnostic": ...} on the held-out contexts
    summary["p_at_r"]      # the same for P@R over the floor sweep (and "oracle": the measured curves)

PPE: the MSE between predicted and measured retention over every (held-out context, grid ratio).
The agnostic curve is the mean retention of the *training* contexts at each grid ratio.

P@R: for each floor, each predictor picks a ratio per context (``two_stage_search`` on its curve
through the grid; the agnostic one picks the same ratio for all), and the *achieved* retention at
that ratio is the context's measured retention, linearly interpolated between the measured grid
ratios (the labels are measured at the grid only). The mean chosen ratio and the mean achieved
retention over the contexts make one point per floor; P@R is the area under those points
(``performance_at_ratio``). Every sweep also holds the uncompressed reading (r = 1, retention 1,
what a floor above every prediction gives), so a predictor whose every floor picks the same ratio
still spans an area. Chosen ratios never go below the smallest grid ratio. ``oracle`` searches the measured curves themselves: the best any
predictor could do on this grid.
"""

from __future__ import annotations

import numpy as np
import torch

FLOORS = [round(0.05 * i, 2) for i in range(21)]


def predict_grid(predictor, cache, indices, batch_size: int = 32) -> np.ndarray:
    """[len(indices), R] predicted retention of those contexts at the cache's grid ratios."""
    grid = torch.tensor(cache.ratios, dtype=torch.float64)
    rows = []
    predictor.eval()
    with torch.no_grad():
        for start in range(0, len(indices), batch_size):
            ctxs = [torch.from_numpy(cache.context(int(i))) for i in indices[start:start + batch_size]]
            width = max(c.numel() for c in ctxs)
            ids = torch.zeros((len(ctxs), width), dtype=torch.long)
            mask = torch.zeros((len(ctxs), width), dtype=torch.long)
            for j, c in enumerate(ctxs):
                ids[j, :c.numel()], mask[j, :c.numel()] = c, 1
            rows.append(predictor(ids.to(predictor.device), mask.to(predictor.device), grid).double().cpu().numpy())
    return np.concatenate(rows)


def _sweep(curves, measured, floors):
    """(mean chosen ratio, mean achieved retention) per floor, then the uncompressed anchor (1, 1)."""
    from framework.models.compression.poc_pipeline import search_ratio

    ratios, achieved = [], []
    for f in floors:
        chosen = [search_ratio(c, f) for c in curves]
        ratios.append(float(np.mean(chosen)))
        achieved.append(float(np.mean([float(m(r)) for m, r in zip(measured, chosen)])))
    return ratios + [1.0], achieved + [1.0]


def compare(predictor, cache, validation_fraction: float, floors=FLOORS) -> dict:
    from data_pipelines.poc_label_cache import split_indices
    from framework.metrics.poc_metrics import (MeanRetentionCurve, mean_retention_curve, paired_ppe_difference,
                                            performance_at_ratio, ppe)

    n = len(cache)
    train, held = split_indices(n, "train", validation_fraction), split_indices(n, "validation", validation_fraction)
    grid = torch.tensor(cache.ratios, dtype=torch.float64)
    target = torch.tensor(cache.retention[held], dtype=torch.float64)
    agnostic = mean_retention_curve(grid, torch.tensor(cache.retention[train], dtype=torch.float64))
    pred_agnostic = agnostic(grid).expand_as(target)
    pred_aware = torch.tensor(predict_grid(predictor, cache, held))
    pred_aware_train = torch.tensor(predict_grid(predictor, cache, train))
    measured = [MeanRetentionCurve(grid, row) for row in target]
    sweeps = {"context_aware": _sweep([MeanRetentionCurve(grid, row) for row in pred_aware], measured, floors),
              "context_agnostic": _sweep([agnostic] * len(measured), measured, floors),
              "oracle": _sweep(measured, measured, floors)}
    p_at_r = {k: performance_at_ratio(list(floors) + [1.0], r, s) for k, (r, s) in sweeps.items()}
    ppe_held = {"context_aware": ppe(pred_aware, target), "context_agnostic": ppe(pred_agnostic, target)}
    train_target = torch.tensor(cache.retention[train], dtype=torch.float64)
    ppe_train = {"context_aware": ppe(pred_aware_train, train_target),
                 "context_agnostic": ppe(agnostic(grid).expand_as(train_target), train_target)}
    return {
        "grid": [float(r) for r in cache.ratios], "contexts": {"train": int(train.size), "held_out": int(held.size)},
        "ppe": ppe_held, "ppe_train": ppe_train, "p_at_r": p_at_r,
        "target_met": ppe_held["context_aware"] < ppe_held["context_agnostic"],
        "ppe_paired": paired_ppe_difference(pred_aware, pred_agnostic, target),  # a: aware, b: agnostic
        "agnostic_curve": [float(v) for v in agnostic.values],
        "measured_mean_held_out": [float(v) for v in target.mean(dim=0)],
        "measured_std_held_out": [float(v) for v in target.std(dim=0)],
        "sweep": {"floors": list(floors), **{k: {"ratio": r, "retention": s} for k, (r, s) in sweeps.items()}},
    }


def plot(summary: dict, path: str) -> None:
    """Achieved retention against mean chosen ratio over the floor sweep, one line per predictor."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, style in (("context_aware", "o-"), ("context_agnostic", "s--"), ("oracle", ":")):
        s = summary["sweep"][name]
        ax.plot(s["ratio"], s["retention"], style, label=f"{name} (P@R {summary['p_at_r'][name]:.3f})")
    ax.set_xlabel("mean chosen ratio r = |compressed| / |original|")
    ax.set_ylabel("mean achieved retention (held out)")
    ax.set_xscale("log")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
