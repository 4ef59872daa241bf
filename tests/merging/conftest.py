"""Fixtures of the merging tests: a tiny Llama base and two fine-tunes of it, and a calibration file."""

from __future__ import annotations

import json

import pytest
from merging_helpers import CALIBRATION, fine_tune, save, tiny_config


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """{"base", "a", "b"}: folders of a tiny Llama base and two fine-tunes of it on two kinds of text."""
    import torch
    from transformers import LlamaForCausalLM

    from data_pipelines.tokenizer import load_project_tokenizer

    root = tmp_path_factory.mktemp("merging_models")
    tok = load_project_tokenizer()
    torch.manual_seed(0)
    base = save(LlamaForCausalLM(tiny_config(len(tok))).eval(), tok, root / "base")
    a = fine_tune(base, ["one two three four five six", "two three four five six seven"], root / "a", seed=1)
    b = fine_tune(base, ["red green blue yellow", "green blue yellow red"], root / "b", seed=2)
    return {"base": base, "a": a, "b": b, "root": str(root)}


@pytest.fixture
def calibration_file(tmp_path) -> str:
    path = tmp_path / "calib.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in CALIBRATION))
    return str(path)
