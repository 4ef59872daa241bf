"""Reconstruction of texts with a context autoencoder (encoder -> k slots -> frozen decoder), as an
MLflow pyfunc logged as *models from code* (like ``pyfunc_model.py``, which serves the causal LMs).

    model = mlflow.pyfunc.load_model("models:/ae-study-tiny-ae-austen-austen@champion")
    model.predict(["the house was quiet and the garden was green"])    # -> ["the house was quiet ..."]

Input: a list of strings (or a one-column DataFrame). Output: one reconstruction per text, decoded
greedily from the text's slots alone. Param ``max_new_tokens``: 0 (the default) decodes as many
tokens as the text has; n > 0 decodes n. Imports MLflow, torch, transformers and
``framework.models`` only (bundled with the model).
"""

from __future__ import annotations

import os
from typing import Any

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel

MODEL_ARTIFACT = "model"


class ReconstructionInputError(ValueError):
    """The model input or a parameter cannot be used."""


def texts_from_input(model_input: Any) -> list[str]:
    """The texts of a list, a Series or a one-column DataFrame."""
    if isinstance(model_input, pd.DataFrame):
        if model_input.shape[1] != 1:
            raise ReconstructionInputError(f"the input has {model_input.shape[1]} columns "
                                           f"({list(map(str, model_input.columns))}). Fix: pass one column of texts")
        values = model_input.iloc[:, 0].tolist()
    elif isinstance(model_input, pd.Series):
        values = model_input.tolist()
    elif isinstance(model_input, str):
        values = [model_input]
    else:
        values = list(model_input)
    if not values or not all(isinstance(v, str) and v.strip() for v in values):
        raise ReconstructionInputError("the input must be one or more non-empty strings, e.g. ['the house was quiet']")
    return values


class Reconstruction(PythonModel):
    """Texts in, greedy reconstructions from their k slots out."""

    def load_context(self, context) -> None:
        import torch
        from transformers import AutoTokenizer

        from framework.models.compression.autoencoder import ENCODER_DIR, ContextAutoencoder

        directory = context.artifacts[MODEL_ARTIFACT]
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = ContextAutoencoder.from_pretrained(directory).to(self.device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(os.path.join(directory, ENCODER_DIR))

    def predict(self, context, model_input, params: dict | None = None) -> list[str]:
        import torch

        max_new = int((params or {}).get("max_new_tokens") or 0)
        if max_new < 0:
            raise ReconstructionInputError(f"param max_new_tokens={max_new} must be >= 0 (0: the text's own length)")
        texts = texts_from_input(model_input)
        rows = [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        width = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, :len(r)], mask[i, :len(r)] = torch.tensor(r), 1
        out = self.model.reconstruct(ids.to(self.device), mask.to(self.device), max_new_tokens=max_new or None)
        return [self.tokenizer.decode(o, skip_special_tokens=True) for o in out]


mlflow.models.set_model(Reconstruction())
