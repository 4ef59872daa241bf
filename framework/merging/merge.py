"""Merge fine-tuned Hugging Face checkpoints of one base into a new ``save_pretrained`` folder.

    report = merge_folders("base/", ["a/", "b/"], "out/", MergeSpec(method="nan+ties", density=0.5))
    AutoModelForCausalLM.from_pretrained("out/")   # the base's config and tokenizer, the merged weights

The task-vector methods stream: for each tensor name, the base's and each model's tensor are read from
their safetensors files, merged, and handed to a shard writer, so memory stays near one model (the output
shard being written) plus one tensor per input. NAN with ``nan_scope="global"`` reads every tensor twice
(norms first). Hi-Merging holds the base, the task vectors and a working model in memory
(framework.merging.hi_merging).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field

from framework.merging.errors import MergeError
from framework.merging.io import (WEIGHTS, WEIGHTS_INDEX, ShardedWriter, copy_side_files, open_checkpoint,
                                  read_config)
from framework.merging.methods import MergeSpec, merge_tensor
from framework.merging.nan import global_coefficients, inverse_norm_coefficients, tensor_norms

REPORT = "merge_report.json"
_ARCH_KEYS = ("model_type", "architectures", "hidden_size", "num_hidden_layers", "vocab_size")


@dataclass
class MergeReport:
    """What a merge did: the method and its settings, the inputs, the coefficients it used, the output."""

    method: str
    base: str
    models: list[str]
    out_dir: str
    density: float
    lam: float
    seed: int
    weights: list[float]                      # the per-model weights used (NAN's global coefficients if any)
    coefficients: dict = field(default_factory=dict)  # method-specific: NAN norms, Hi-Merging's alphas/betas
    tensors: int = 0
    files: list[str] = field(default_factory=list)

    def params(self) -> dict[str, str]:
        """Flat string params, for an MLflow run."""
        out = {"method": self.method, "base": self.base, "density": str(self.density), "lambda": str(self.lam),
               "seed": str(self.seed), "num_models": str(len(self.models)), "tensors": str(self.tensors)}
        for i, (model, weight) in enumerate(zip(self.models, self.weights)):
            out[f"model_{i}"] = model
            out[f"weight_{i}"] = f"{weight:.6g}"
        for key, value in self.coefficients.items():
            if isinstance(value, (int, float, str)):
                out[key] = str(value)
            elif isinstance(value, list) and all(isinstance(v, (int, float)) for v in value):
                for i, v in enumerate(value):
                    out[f"{key}_{i}"] = f"{v:.6g}"
            elif key == "hi_beta":  # {model: {group: beta}}
                for i, groups in value.items():
                    for group, v in groups.items():
                        out[f"hi_beta_{i}_{group}"] = f"{v:.6g}"
        return out

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


def check_compatible(base_dir: str, model_dirs: list[str], base_ckpt, model_ckpts, labels: list[str]) -> list[str]:
    """The base's tensor names, after checking that every model has the same architecture, the same tensor
    names and the same shapes (from the safetensors headers; nothing is loaded)."""
    base_cfg = read_config(base_dir)
    names = base_ckpt.names()
    base_set = set(names)
    for label, directory, ckpt in zip(labels, model_dirs, model_ckpts):
        cfg = read_config(directory)
        diff = [f"{k}: {cfg.get(k)!r} vs the base's {base_cfg.get(k)!r}" for k in _ARCH_KEYS if cfg.get(k) != base_cfg.get(k)]
        if diff:
            raise MergeError(f"{label} does not have the base's architecture ({'; '.join(diff)}). Fix: merge only "
                             "fine-tunes of the same base model, and pass that model as --base")
        names_i = set(ckpt.names())
        if names_i != base_set:
            missing, extra = sorted(base_set - names_i)[:3], sorted(names_i - base_set)[:3]
            raise MergeError(f"{label} has other tensors than the base (missing {missing}, extra {extra}). "
                             "Fix: merge only full fine-tunes of the same base (merge LoRA adapters into their "
                             "model first)")
        for name in names:
            if ckpt.shape(name) != base_ckpt.shape(name):
                raise MergeError(f"{label}: tensor {name!r} has shape {list(ckpt.shape(name))}, the base's has "
                                 f"{list(base_ckpt.shape(name))}. Fix: merge only fine-tunes of the same base model "
                                 "(same architecture and size)")
    return names


def prepare_out_dir(out_dir: str, inputs: list[str]) -> None:
    out = os.path.realpath(out_dir)
    for directory in inputs:
        if os.path.realpath(directory) == out:
            raise MergeError(f"the output folder {out_dir!r} is one of the inputs. Fix: write the merge to a new folder")
    if os.path.exists(out_dir):
        if not os.path.isdir(out_dir):
            raise MergeError(f"the output {out_dir!r} exists and is not a folder. Fix: pass a new folder")
        if os.path.exists(os.path.join(out_dir, WEIGHTS)) or os.path.exists(os.path.join(out_dir, WEIGHTS_INDEX)):
            raise MergeError(f"the output folder {out_dir!r} already holds a model. Fix: pass a new folder, or "
                             "delete that one first")


def merge_folders(base_dir: str, model_dirs: list[str], out_dir: str, spec: MergeSpec, *,
                  labels: list[str] | None = None, calibration: str | None = None,
                  max_shard_bytes: int = 4 * 1024 ** 3, progress=None) -> MergeReport:
    """Merge the models in `model_dirs` (fine-tunes of the model in `base_dir`) into `out_dir` under `spec`.

    labels: how to name each model in errors and the report (default: its folder). calibration: a JSONL
    file of {"text": ...} records, needed by hi_merging. The output folder gets the merged safetensors,
    the base's config and tokenizer files, and merge_report.json (the returned report)."""
    model_dirs = list(model_dirs)
    labels = list(labels or model_dirs)
    spec.validate(len(model_dirs))
    for label, directory in [("--base " + base_dir, base_dir)] + list(zip(labels, model_dirs)):
        if not os.path.isdir(directory):
            raise MergeError(f"{label}: no such folder. Fix: pass a save_pretrained folder or a models:/ URI")
    prepare_out_dir(out_dir, [base_dir, *model_dirs])
    say = progress or (lambda _msg: None)

    base_ckpt = open_checkpoint(base_dir)
    model_ckpts = [open_checkpoint(d) for d in model_dirs]
    try:
        names = check_compatible(base_dir, model_dirs, base_ckpt, model_ckpts, labels)
        weights = [1.0] * len(model_dirs) if spec.weights is None else [float(w) for w in spec.weights]
        coefficients: dict = {}
        if spec.base_method in ("dare", "dare_ties"):
            coefficients["dare_rescale"] = spec.dare_rescale
        if spec.method == "hi_merging":
            from framework.merging.hi_merging import hi_merge_folders

            state, coefficients = hi_merge_folders(base_dir, base_ckpt, model_ckpts, names, spec, weights,
                                                   calibration, progress=say)
            writer = ShardedWriter(out_dir, max_shard_bytes)
            for name in names:
                writer.add(name, state.pop(name))
            files = writer.close()
        else:
            if spec.uses_nan and spec.nan_scope == "global":
                say("NAN: computing the global norms")
                weights, norms = global_coefficients(base_ckpt, model_ckpts, names, spec.nan_norm, labels)
                coefficients.update({"nan_scope": "global", "nan_norm": spec.nan_norm, "nan_norms": norms})
            per_tensor: dict[str, list[float]] = {}
            writer = ShardedWriter(out_dir, max_shard_bytes)
            for k, name in enumerate(names):
                base = base_ckpt.get(name)
                finetuned = [m.get(name) for m in model_ckpts]
                w = weights
                if spec.uses_nan and spec.nan_scope == "per_tensor" and base.is_floating_point():
                    w = inverse_norm_coefficients(tensor_norms(base, finetuned, spec.nan_norm))
                    per_tensor[name] = w
                writer.add(name, merge_tensor(base, finetuned, w, spec, name=name))
                if (k + 1) % 50 == 0:
                    say(f"merged {k + 1}/{len(names)} tensors")
            files = writer.close()
            if per_tensor:
                mean = [sum(c[i] for c in per_tensor.values()) / len(per_tensor) for i in range(len(model_dirs))]
                coefficients.update({"nan_scope": "per_tensor", "nan_norm": spec.nan_norm,
                                     "nan_mean_coefficient": mean, "nan_per_tensor": per_tensor})
                weights = mean
    finally:
        base_ckpt.close()
        for m in model_ckpts:
            m.close()
    copy_side_files(base_dir, out_dir)
    report = MergeReport(method=spec.method, base=base_dir, models=labels, out_dir=out_dir, density=spec.density,
                         lam=spec.lam, seed=spec.seed, weights=weights, coefficients=coefficients,
                         tensors=len(names), files=files)
    with open(os.path.join(out_dir, REPORT), "w") as fh:
        fh.write(report.to_json())
    return report
