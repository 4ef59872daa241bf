"""Question answering over a compressed context with a RAM or COMI model, as an MLflow pyfunc logged
as *models from code* (like ``pyfunc_model.py``, which serves the causal LMs).

    model = mlflow.pyfunc.load_model("models:/comi-qa-tiny@champion")
    model.predict(pd.DataFrame({"context": [long_text], "question": ["What is the value of pear?"]}),
                  params={"ratio": 8})                                # -> ["41907"]

Inputs: a DataFrame (or dict of lists) with ``context`` and ``question`` columns (called directly,
without MLflow's schema check, the official RAM/COMI JSONL names ``input`` and ``prompt`` work too).
Output: one answer string per row.
Params: ``ratio`` (target compression; unset: the ratio the model was trained at), ``max_new_tokens``.
Imports MLflow, torch, transformers and ``framework.models`` only (bundled with the model).
"""

from __future__ import annotations

from typing import Any

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel

MODEL_ARTIFACT = "model"
MAX_NEW_TOKENS_KEY = "default_max_new_tokens"
COLUMNS = {"context": ("context", "input"), "question": ("question", "prompt")}


class QAInputError(ValueError):
    """The model input or a parameter cannot be used."""


def rows_from_input(model_input: Any) -> list[tuple[str, str]]:
    """(context, question) pairs from a DataFrame or a dict of columns."""
    data = model_input
    if isinstance(data, dict):
        data = pd.DataFrame({k: (v if isinstance(v, (list, tuple)) else [v]) for k, v in data.items()})
    if not isinstance(data, pd.DataFrame):
        raise QAInputError(f"unsupported input {type(model_input).__name__}: pass a DataFrame or dict with "
                           "'context' and 'question' columns")
    picked = {}
    for role, names in COLUMNS.items():
        name = next((n for n in names if n in data.columns), None)
        if name is None:
            raise QAInputError(f"the input has no {role!r} column (columns: {list(map(str, data.columns))}). "
                               f"Fix: name the columns {' and '.join(repr(n[0]) for n in COLUMNS.values())}")
        values = []
        for cell in data[name].tolist():
            # MLflow's schema enforcement turns {"context": [a, b]} into one row whose cell is the list
            if hasattr(cell, "tolist") and not isinstance(cell, str):
                cell = cell.tolist()
            values.extend(cell if isinstance(cell, (list, tuple)) else [cell])
        picked[role] = values
    if len(picked["context"]) != len(picked["question"]):
        raise QAInputError(f"{len(picked['context'])} contexts but {len(picked['question'])} questions: "
                           "give one question per context")
    rows = list(zip(picked["context"], picked["question"]))
    if not rows:
        raise QAInputError("no rows given: pass at least one (context, question) row")
    for i, (ctx, q) in enumerate(rows):
        if not isinstance(ctx, str) or not isinstance(q, str) or not q.strip():
            raise QAInputError(f"row {i}: context and question must be strings and the question non-empty")
    return rows


class CompressedQA(PythonModel):
    """(context, question) rows in, answers out, through the model's compressor."""

    def load_context(self, context) -> None:
        import torch
        from transformers import AutoTokenizer

        from framework.models.compression.skeleton import CompressorForQA

        directory = context.artifacts[MODEL_ARTIFACT]
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = CompressorForQA.from_pretrained(directory).to(self.device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(directory)
        self.default_max_new_tokens = int((context.model_config or {}).get(MAX_NEW_TOKENS_KEY, 32))

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> list[str]:
        from framework.models.compression.prompts import encode_qa_batch

        params = dict(params or {})
        ratio = params.get("ratio")
        if ratio is not None and float(ratio) < 1:
            raise QAInputError(f"param ratio={ratio} must be >= 1 (the context tokens per memory slot)")
        max_new = params.get("max_new_tokens")
        max_new = self.default_max_new_tokens if max_new is None else int(max_new)
        rows = rows_from_input(model_input)
        batch = encode_qa_batch(self.tokenizer, rows, self.device)
        answers, _ = self.model.generate(**batch, max_new_tokens=max_new,
                                         ratio=None if ratio is None else float(ratio),
                                         eos_token_id=self.tokenizer.eos_token_id)
        return [self.tokenizer.decode(a, skip_special_tokens=True).strip() for a in answers]


mlflow.models.set_model(CompressedQA())
