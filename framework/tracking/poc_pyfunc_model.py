"""PoC, performance-oriented context compression, as an MLflow pyfunc logged as *models from code*
(like ``qa_pyfunc_model.py``): a performance floor in, per context the ratio the predictor picks,
the context compressed there by the bundled compressor, and the answer when a question is given.

    model = mlflow.pyfunc.load_model("models:/poc-predictor-tiny@champion")
    model.predict(pd.DataFrame({"context": [long_text], "question": ["What is the value of pear?"]}),
                  params={"floor": 0.9})
    # -> DataFrame: ratio, predicted_retention, context_tokens, memory_slots, answer

Inputs: ``context`` (or ``input``) and an optional ``question`` (or ``prompt``) column; an empty
question compresses without answering (``answer`` is then ""). Params: ``floor`` (the retention to
keep, in [0, 1]; default 0.9), ``max_new_tokens``.
Imports MLflow, torch, transformers and ``framework.models`` only (bundled with the model).
"""

from __future__ import annotations

from typing import Any

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel

MODEL_ARTIFACT = "model"
MAX_NEW_TOKENS_KEY = "default_max_new_tokens"
CONTEXT, QUESTION = ("context", "input"), ("question", "prompt")


class PoCInputError(ValueError):
    """The model input or a parameter cannot be used."""


def _column(data: pd.DataFrame, names) -> list | None:
    name = next((n for n in names if n in data.columns), None)
    if name is None:
        return None
    values = []
    for cell in data[name].tolist():
        if hasattr(cell, "tolist") and not isinstance(cell, str):
            cell = cell.tolist()
        values.extend(cell if isinstance(cell, (list, tuple)) else [cell])
    return values


def rows_from_input(model_input: Any) -> list[tuple[str, str]]:
    """(context, question or "") pairs from a DataFrame or a dict of columns."""
    data = model_input
    if isinstance(data, dict):
        data = pd.DataFrame({k: (v if isinstance(v, (list, tuple)) else [v]) for k, v in data.items()})
    if not isinstance(data, pd.DataFrame):
        raise PoCInputError(f"unsupported input {type(model_input).__name__}: pass a DataFrame or dict with a "
                            "'context' column (and optionally 'question')")
    contexts = _column(data, CONTEXT)
    if contexts is None:
        raise PoCInputError(f"the input has no 'context' column (columns: {list(map(str, data.columns))}). "
                            "Fix: name it 'context'")
    questions = _column(data, QUESTION) or [""] * len(contexts)
    if len(questions) != len(contexts):
        raise PoCInputError(f"{len(contexts)} contexts but {len(questions)} questions: one question per context")
    rows = [(c, "" if q is None or (isinstance(q, float) and q != q) else q) for c, q in zip(contexts, questions)]
    for i, (c, q) in enumerate(rows):
        if not isinstance(c, str) or not c.strip() or not isinstance(q, str):
            raise PoCInputError(f"row {i}: the context must be a non-empty string and the question a string")
    if not rows:
        raise PoCInputError("no rows given: pass at least one context")
    return rows


def check_floor(floor) -> float:
    try:
        value = float(floor)
    except (TypeError, ValueError):
        raise PoCInputError(f"floor={floor!r} is not a number. Fix: a retention in [0, 1], e.g. 0.9") from None
    if not 0.0 <= value <= 1.0:
        raise PoCInputError(f"floor={value} is outside [0, 1]: it is the share of the uncompressed score to keep. "
                            "Fix: e.g. 0.9")
    return value


class PoCCompression(PythonModel):
    def load_context(self, context) -> None:
        from framework.models.compression.poc_pipeline import PoCPipeline

        self.pipeline = PoCPipeline.from_pretrained(context.artifacts[MODEL_ARTIFACT])
        self.default_max_new_tokens = int((context.model_config or {}).get(MAX_NEW_TOKENS_KEY, 16))

    def predict(self, context, model_input, params: dict | None = None) -> pd.DataFrame:
        params = dict(params or {})
        floor = check_floor(0.9 if params.get("floor") is None else params["floor"])
        max_new = params.get("max_new_tokens")
        max_new = self.default_max_new_tokens if max_new is None else int(max_new)
        out = []
        for ctx, question in rows_from_input(model_input):
            got = self.pipeline.run(ctx, floor, question or None, max_new)
            out.append({"ratio": got["ratio"], "predicted_retention": got["predicted_retention"],
                        "context_tokens": got["context_tokens"], "memory_slots": got["memory_slots"],
                        "answer": got.get("answer", "")})
        return pd.DataFrame(out, columns=["ratio", "predicted_retention", "context_tokens", "memory_slots", "answer"])


mlflow.models.set_model(PoCCompression())
