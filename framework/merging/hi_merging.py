"""Hi-Merging: hierarchical iterative merging guided by contribution analysis on a calibration set.

The merged model is theta = theta_base + sum_i sum_g alpha_i * beta_{i,g} * tau_{i,g}: tau_{i,g} is model i's
task vector restricted to layer group g (transformer block N for every tensor named ``...layers.N...``,
``h.N`` or ``blocks.N``; one group ``other`` for the embeddings, final norm and head), alpha_i a model-wise
and beta_{i,g} a layer-wise coefficient. It starts as task arithmetic (alpha_i = lambda * w_i, beta = 1) and
each round runs two stages, model-wise then layer-wise:

1. Contribution analysis: for every active unit u (a model, then a (model, group) pair), with L the mean
   token cross-entropy on the calibration texts, c_u = L(theta without u's current term) - L(theta). A
   positive c_u means u helps (removing it raises the loss).
2. Pruning, worst first: while the lowest c_u is <= min_contribution (default 0), that unit's coefficient
   is set to 0 and the contributions of the units left are measured again (a strongly harmful unit can
   mask the help of the others, so they are not pruned together).
3. Scaling: every unit left has its coefficient multiplied by clip(c_u / mean(c), 1 - scale_range,
   1 + scale_range): units that help more than the average are scaled up, the others down. The scaling
   is kept only if it lowers L. With min_contribution <= 0, L never rises from the task-arithmetic start.

Rounds repeat until one changes nothing or ``iterations`` rounds have run. Choices the paper leaves open
(the contribution measure, the threshold, the scaling rule, the acceptance test, the grouping) are made
here as above and documented in docs/merging.md. Memory: the base, every task vector and a working model,
all in float32 (about n_models + 2 models); the other methods stream.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from typing import Callable

import torch

from framework.merging.errors import MergeError
from framework.merging.task_vectors import COMPUTE_DTYPE

_LAYER = re.compile(r"(?:^|\.)(?:layers|h|blocks)\.(\d+)\.")
OTHER_GROUP = "other"


def layer_group(name: str) -> str:
    """``layer.N`` for a tensor of transformer block N, else ``other``."""
    m = _LAYER.search(name)
    return f"layer.{int(m.group(1))}" if m else OTHER_GROUP


@dataclass
class HiMergingConfig:
    iterations: int = 3  # rounds of (model-wise, layer-wise) stages at most
    min_contribution: float = 0.0
    scale_range: float = 0.5
    tolerance: float = 1e-7

    def validate(self) -> "HiMergingConfig":
        if self.iterations < 1:
            raise MergeError(f"iterations={self.iterations} must be at least 1. Fix: pass e.g. 3")
        if not 0.0 <= self.scale_range < 1.0:
            raise MergeError(f"scale_range={self.scale_range} must be in [0, 1) (scales stay in [1-r, 1+r]). "
                             "Fix: pass e.g. 0.5")
        return self


Coefficients = dict[tuple[int, str], float]  # (model, group) -> alpha_i * beta_{i,g}


def _scaled(units: list, contributions: dict, values: dict, cfg: HiMergingConfig) -> dict:
    """Each unit's coefficient times clip(c_u / mean(c), 1 - scale_range, 1 + scale_range)."""
    mean = sum(contributions[u] for u in units) / len(units)
    if mean <= 0:
        return dict(values)
    return {u: values[u] * min(max(contributions[u] / mean, 1.0 - cfg.scale_range), 1.0 + cfg.scale_range)
            for u in units}


def hierarchical_merge(n_models: int, groups: list[str], loss_of: Callable[[Coefficients], float],
                       init_alpha: list[float], cfg: HiMergingConfig | None = None,
                       progress=None) -> tuple[list[float], dict[int, dict[str, float]], list[dict]]:
    """The Hi-Merging search over model-wise alphas and layer-wise betas.

    ``loss_of(coefficients)`` evaluates the calibration loss of ``base + sum coefficients[(i, g)] * tau_{i,g}``.
    Returns (alpha, beta, history): the final coefficient of (i, g) is ``alpha[i] * beta[i][g]``; history lists
    each stage's contributions, the units pruned, whether the scaling was kept, and the loss."""
    cfg = (cfg or HiMergingConfig()).validate()
    say = progress or (lambda _m: None)
    alpha = [float(a) for a in init_alpha]
    beta = {i: {g: 1.0 for g in groups} for i in range(n_models)}

    def coefficients(values: dict, stage: str) -> Coefficients:
        """All coefficients, with the stage's units (models, or (model, group) pairs) set from `values`."""
        if stage == "model":
            a = [values.get(i, alpha[i]) for i in range(n_models)]
            return {(i, g): a[i] * beta[i][g] for i in range(n_models) for g in groups}
        return {(i, g): alpha[i] * values.get((i, g), beta[i][g]) for i in range(n_models) for g in groups}

    current = loss_of(coefficients({}, "model"))
    if not math.isfinite(current):
        raise MergeError(f"the calibration loss of the task-arithmetic start is {current}. Fix: lower --lambda, or "
                         "check the calibration texts and the models for NaN weights")
    history = [{"stage": "start", "loss": current}]
    say(f"hi_merging: start loss {current:.4f}")
    for round_ in range(cfg.iterations):
        changed = False
        for stage in ("model", "layer"):
            if stage == "model":
                values = {i: alpha[i] for i in range(n_models) if alpha[i] != 0}
            else:
                values = {(i, g): beta[i][g] for i in range(n_models) if alpha[i] != 0 for g in groups
                          if beta[i][g] != 0}
            active, pruned, contributions = list(values), [], {}
            # prune the worst contributor, re-measure the rest, until every one left helps
            while active:
                contributions = {u: loss_of(coefficients({**values, u: 0.0}, stage)) - current for u in active}
                worst = min(active, key=lambda u: contributions[u])
                if contributions[worst] > cfg.min_contribution:
                    break
                values[worst] = 0.0
                current += contributions[worst]
                active.remove(worst)
                pruned.append(str(worst))
            scaled = False
            if active:
                candidate = {**values, **_scaled(active, contributions, values, cfg)}
                if any(candidate[u] != values[u] for u in active):
                    loss = loss_of(coefficients(candidate, stage))
                    if math.isfinite(loss) and loss < current - cfg.tolerance:
                        values, current, scaled = candidate, loss, True
            if pruned or scaled:
                changed = True
                for u, v in values.items():
                    if stage == "model":
                        alpha[u] = v
                    else:
                        beta[u[0]][u[1]] = v
            history.append({"round": round_, "stage": stage, "pruned": pruned, "scaled": scaled, "loss": current,
                            "contributions": {str(u): c for u, c in contributions.items()}})
            say(f"hi_merging: round {round_} {stage}-wise: pruned {pruned or 'none'}, "
                f"{'scaled' if scaled else 'not scaled'}, loss {current:.4f}")
        if not changed:
            break
    return alpha, beta, history


def read_calibration(path: str | None, max_texts: int = 64) -> list[str]:
    """The "text" of each JSONL record (the first max_texts)."""
    if not path:
        raise MergeError("hi_merging needs a calibration set. Fix: pass --calibration FILE.jsonl with one "
                         '{"text": ...} record per line (a few dozen short texts of the target tasks)')
    if not os.path.isfile(path):
        raise MergeError(f"--calibration {path!r}: no such file. Fix: pass a JSONL file of {{\"text\": ...}} records")
    texts = []
    with open(path) as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise MergeError(f"--calibration {path}: line {n} is not JSON ({err.msg}). Fix: one JSON object "
                                 "per line") from None
            text = record.get("text") if isinstance(record, dict) else None
            if not isinstance(text, str) or not text.strip():
                raise MergeError(f"--calibration {path}: line {n} has no non-empty \"text\" string. Fix: write "
                                 "each record as {\"text\": \"...\"}")
            texts.append(text)
            if len(texts) >= max_texts:
                break
    if not texts:
        raise MergeError(f"--calibration {path} holds no records. Fix: add {{\"text\": ...}} lines")
    return texts


class CalibrationLoss:
    """Mean next-token cross-entropy of `model` over the calibration texts (each truncated to max_length
    tokens; weighted by the number of predicted tokens)."""

    def __init__(self, model, tokenizer, texts: list[str], max_length: int = 128):
        self.model = model.eval()
        self.inputs = []
        for text in texts:
            ids = tokenizer(text, return_tensors="pt", truncation=True, max_length=max_length)["input_ids"]
            if ids.shape[1] >= 2:
                self.inputs.append(ids)
        if not self.inputs:
            raise MergeError("every calibration text is shorter than 2 tokens. Fix: use longer calibration texts")

    def __call__(self) -> float:
        total, count = 0.0, 0
        with torch.no_grad():
            for ids in self.inputs:
                loss = self.model(input_ids=ids, labels=ids).loss
                total += float(loss) * (ids.shape[1] - 1)
                count += ids.shape[1] - 1
        return total / count


def hi_merge_folders(base_dir: str, base_ckpt, model_ckpts, names: list[str], spec, weights: list[float],
                     calibration: str | None, progress=None, cfg: HiMergingConfig | None = None):
    """Run Hi-Merging on checkpoints; (merged state dict in the base's dtypes, coefficients for the report)."""
    from transformers import AutoTokenizer

    from framework.models.loading import load_causal_lm

    texts = read_calibration(calibration)
    cfg = cfg or HiMergingConfig(**{k: v for k, v in spec.extra.items() if k in HiMergingConfig.__dataclass_fields__})
    try:
        tokenizer = AutoTokenizer.from_pretrained(base_dir)
    except Exception as err:  # noqa: BLE001 - OSError/ValueError from transformers
        raise MergeError(f"hi_merging needs the base's tokenizer for the calibration loss ({err}). Fix: save the "
                         "base with its tokenizer (tokenizer.save_pretrained(base_dir))") from None
    model = load_causal_lm(base_dir, dtype=torch.float32)
    params = model.state_dict()
    missing = [n for n in names if n not in params]
    if missing:
        raise MergeError(f"the base model has no parameters named {missing[:3]} from its checkpoint. Fix: merge "
                         "plain Hugging Face causal LM checkpoints")
    floats = [n for n in names if base_ckpt.get(n).is_floating_point()]
    base = {n: base_ckpt.get(n).to(COMPUTE_DTYPE) for n in floats}
    taus = [{n: m.get(n).to(COMPUTE_DTYPE) - base[n] for n in floats} for m in model_ckpts]
    group_of = {n: layer_group(n) for n in floats}
    groups = sorted(set(group_of.values()), key=lambda g: (g == OTHER_GROUP, int(g.split(".")[1]) if "." in g else 0))
    loss = CalibrationLoss(model, tokenizer, texts)

    def apply(coefficients: Coefficients) -> None:
        with torch.no_grad():
            for n in floats:
                value = base[n].clone()
                for i, tau in enumerate(taus):
                    c = coefficients[(i, group_of[n])]
                    if c != 0:
                        value.add_(tau[n], alpha=c)
                params[n].copy_(value)

    def loss_of(coefficients: Coefficients) -> float:
        apply(coefficients)
        return loss()

    alpha, beta, history = hierarchical_merge(len(taus), groups, loss_of, [spec.lam * w for w in weights], cfg,
                                              progress)
    final = {(i, g): alpha[i] * beta[i][g] for i in range(len(taus)) for g in groups}
    state = {}
    for n in names:
        original = base_ckpt.get(n)
        if n not in base:
            state[n] = original
            continue
        value = base[n].clone()
        for i, tau in enumerate(taus):
            if final[(i, group_of[n])] != 0:
                value.add_(tau[n], alpha=final[(i, group_of[n])])
        state[n] = value.to(original.dtype)
    coefficients = {"hi_alpha": alpha, "hi_beta": {str(i): beta[i] for i in beta},
                    "hi_calibration_loss_start": history[0]["loss"], "hi_calibration_loss": history[-1]["loss"],
                    "hi_history": history, "hi_calibration_texts": len(loss.inputs)}
    return state, coefficients
