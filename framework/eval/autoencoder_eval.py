"""Validation of a context autoencoder on held-out texts: greedy reconstruction from the slots alone,
scored per sample with token F1, BLEU and ROUGE-L, next to the sample's entropy (mean token NLL,
nats) under the encoder's LM head and under the frozen decoder's.

    report = evaluate(ae, [source[i]["input_ids"] for i in range(64)], batch_size=16)
    report["records"][0]     # {"index", "tokens", "f1", "bleu", "rouge_l", "encoder_entropy", "decoder_entropy"}
    report["means"]          # {"f1", "bleu", "rouge_l", "encoder_entropy", "decoder_entropy"}
    entropy_correlations(report["records"])   # Spearman (rho, p) of each entropy against F1

encoder_lm: the model that measures the encoder's entropy; by default the autoencoder's own encoder
(``ContextAutoencoder.entropies``). The study passes the encoder's pretrained LM, whose head still
matches its body (training the autoencoder changes the encoder's body, not its head).
"""

from __future__ import annotations

from typing import Sequence

import torch

METRICS = ("f1", "bleu", "rouge_l")
ENTROPIES = ("encoder_entropy", "decoder_entropy")


def _ids(sample) -> torch.Tensor:
    ids = sample["input_ids"] if isinstance(sample, dict) else sample
    return torch.as_tensor(ids, dtype=torch.long).flatten()


def _batch(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)], mask[i, :len(r)] = r, 1
    return ids, mask


@torch.no_grad()
def evaluate(model, samples: Sequence, batch_size: int = 16, encoder_lm=None) -> dict:
    """Per-sample records and their means (module docstring). samples: token id sequences (or dicts
    with ``input_ids``) of 2+ tokens each."""
    from framework.models.compression.entropy import token_nll

    if not samples:
        raise ValueError("no samples to evaluate. Fix: pass at least one held-out text")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    was_training = model.training
    model.eval()
    records = []
    try:
        for start in range(0, len(samples), batch_size):
            rows = [_ids(s) for s in samples[start:start + batch_size]]
            ids, mask = _batch(rows)
            scores = model.reconstruction_scores(ids, mask)
            entropy = model.entropies(ids, mask)
            if encoder_lm is not None:
                entropy["encoder"] = token_nll(encoder_lm, ids, mask)
            for j, score in enumerate(scores):
                records.append({"index": start + j, "tokens": len(rows[j]), **score,
                                "encoder_entropy": float(entropy["encoder"][j]),
                                "decoder_entropy": float(entropy["decoder"][j])})
    finally:
        model.train(was_training)
    return {"records": records, "means": means(records)}


def means(records: Sequence[dict]) -> dict:
    """The mean of each metric and entropy over `records`."""
    return {key: sum(r[key] for r in records) / len(records) for key in METRICS + ENTROPIES} if records else {}


def entropy_correlations(records: Sequence[dict], metric: str = "f1") -> dict:
    """{"encoder": {"rho", "p"}, "decoder": {"rho", "p"}}: Spearman of each entropy against `metric`
    (rho and p are None when fewer than 3 records, or a constant series, leave nothing to rank)."""
    from framework.metrics.correlation import spearman

    out = {}
    for side in ("encoder", "decoder"):
        xs = [r[f"{side}_entropy"] for r in records]
        ys = [r[metric] for r in records]
        try:
            rho, p = spearman(xs, ys)
        except ValueError:
            rho, p = None, None
        out[side] = {"rho": rho, "p": p, "n": len(records)}
    return out
