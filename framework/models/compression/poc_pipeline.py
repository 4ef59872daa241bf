"""PoC end to end: a performance floor in, a ratio per context out, then the context compressed at it.

    pipe = PoCPipeline.from_pretrained("poc-dir")                 # predictor + its compressor + tokenizer
    choice = pipe.choose(context_ids, floor=0.9)                  # ratio, predicted retention, factor
    out = pipe.run("pear: 41907. ...", floor=0.9, question="What is the value of pear?")

A saved PoC directory is self-contained:

    config.json, poc_predictor.json, poc_predictor.safetensors    the predictor (PoCPredictor)
    tokenizer files                                               the contexts' tokenizer
    poc_pipeline.json                                             the label grid and what it was measured with
    compressor/                                                   the compressor the labels were measured with

The predictor was trained on the label grid's ratios only, so the ratio search runs on the
predictor's curve *through the grid*: its predictions at the grid ratios, linearly interpolated
(the same interpolation as the context-agnostic mean curve; constant beyond the ends), and the
chosen ratio is never below the smallest grid ratio (nothing was measured there). The chosen
ratio r becomes the compressor's factor f = floor(1 / r) (context tokens per slot), which never
compresses more than r; r = 1 reads the context uncompressed.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass

import torch

from framework.models.compression.poc_predictor import PoCPredictor, PoCPredictorError

PIPELINE_CONFIG = "poc_pipeline.json"
COMPRESSOR_DIR = "compressor"


def is_poc_dir(directory: str) -> bool:
    from framework.models.compression.poc_predictor import PREDICTOR_CONFIG

    return os.path.isfile(os.path.join(directory, PREDICTOR_CONFIG))


def save_pipeline(predictor: PoCPredictor, directory: str, tokenizer, grid, compressor_dir: str | None,
                  info: dict | None = None) -> None:
    """Write a self-contained PoC directory (the predictor, its tokenizer, grid and compressor)."""
    predictor.save_pretrained(directory)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    with open(os.path.join(directory, PIPELINE_CONFIG), "w") as fh:
        json.dump({"grid": [float(r) for r in grid], **(info or {})}, fh, indent=2)
    if compressor_dir:
        target = os.path.join(directory, COMPRESSOR_DIR)
        if os.path.abspath(compressor_dir) != os.path.abspath(target):
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(compressor_dir, target)


@dataclass
class Choice:
    ratio: float                # chosen r = |compressed| / |original|
    predicted_retention: float  # the predictor's retention at r
    factor: int | None          # the compressor's context tokens per slot (None: uncompressed)


def grid_curve(predictor: PoCPredictor, input_ids: torch.Tensor, attention_mask, grid: torch.Tensor):
    """The context's predicted retention curve: predictions at the grid ratios, linearly interpolated."""
    from framework.metrics.poc_metrics import MeanRetentionCurve

    with torch.no_grad():
        values = predictor(input_ids[None] if input_ids.dim() == 1 else input_ids,
                           None if attention_mask is None else (attention_mask[None] if attention_mask.dim() == 1
                                                                else attention_mask), grid)[0]
    return MeanRetentionCurve(grid.double().cpu(), values.double().cpu())


def factor_for_ratio(ratio: float) -> int | None:
    """The compressor's whole factor for ratio r: floor(1 / r) (never more compression than r), None at r >= 1."""
    f = math.floor(1.0 / ratio + 1e-9)
    return None if f <= 1 else f


def search_ratio(curve, floor: float) -> float:
    """``two_stage_search`` on the curve, kept within the grid: nothing was measured below the smallest
    grid ratio (the curve is only extrapolated there), so the answer is at least that ratio."""
    from framework.metrics.poc_metrics import two_stage_search

    return max(two_stage_search(curve, floor), float(curve.ratios[0]))


def choose(curve, floor: float) -> Choice:
    r = search_ratio(curve, floor)
    return Choice(ratio=r, predicted_retention=float(curve(r)), factor=factor_for_ratio(r))


class PoCPipeline:
    def __init__(self, predictor: PoCPredictor, compressor, tokenizer, grid, info: dict):
        self.predictor, self.compressor, self.tokenizer, self.info = predictor.eval(), compressor, tokenizer, info
        self.grid = torch.tensor(sorted(float(r) for r in grid), dtype=torch.float64)

    @classmethod
    def from_pretrained(cls, directory: str, device: str | None = None) -> "PoCPipeline":
        from transformers import AutoTokenizer

        from framework.models.compression.skeleton import CompressorForQA

        config = os.path.join(directory, PIPELINE_CONFIG)
        comp_dir = os.path.join(directory, COMPRESSOR_DIR)
        if not is_poc_dir(directory) or not os.path.isfile(config) or not os.path.isdir(comp_dir):
            raise PoCPredictorError(f"{directory} is not a complete PoC predictor: it needs poc_predictor.json, "
                                    f"{PIPELINE_CONFIG} and {COMPRESSOR_DIR}/. Fix: use a model that "
                                    "recipes/poc_predictor.py registered")
        with open(config) as fh:
            info = json.load(fh)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        predictor = PoCPredictor.from_pretrained(directory).to(device)
        compressor = CompressorForQA.from_pretrained(comp_dir).to(device).eval()
        tokenizer = AutoTokenizer.from_pretrained(directory)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        return cls(predictor, compressor, tokenizer, info["grid"], info)

    def choose(self, context_ids: torch.Tensor, floor: float) -> Choice:
        ids = context_ids.to(self.predictor.device)
        return choose(grid_curve(self.predictor, ids, None, self.grid.to(self.predictor.device)), floor)

    def run(self, context: str, floor: float, question: str | None = None, max_new_tokens: int = 16) -> dict:
        """Choose the ratio of one context, compress it there, and answer the question if given."""
        from framework.models.compression.prompts import encode_qa_batch

        batch = encode_qa_batch(self.tokenizer, [(context, question or "")], self.compressor.device)
        if not question:
            batch["question_mask"] = torch.zeros_like(batch["question_mask"])
        if not bool(batch["context_mask"].any()):
            raise PoCPredictorError("the context is empty. Fix: give a context with some text to compress")
        choice = self.choose(batch["context_ids"][0][batch["context_mask"][0]], floor)
        with torch.no_grad():
            if choice.factor is None:
                comp = self.compressor.token_memory(batch["context_ids"], batch["context_mask"])
            else:
                comp = self.compressor.compress(batch["context_ids"], batch["context_mask"], batch["question_ids"],
                                                batch["question_mask"], ratio=choice.factor)
            out = {"ratio": choice.ratio, "predicted_retention": choice.predicted_retention,
                   "factor": choice.factor, "context_tokens": comp.context_tokens[0],
                   "memory_slots": comp.memory_slots[0]}
            if question:
                answers = self.compressor.answer(comp.memory, batch["question_ids"], batch["question_mask"],
                                                 max_new_tokens, self.tokenizer.eos_token_id)
                out["answer"] = self.tokenizer.decode(answers[0], skip_special_tokens=True).strip()
        out["memory"] = comp.memory[0].detach().float().cpu()
        return out
