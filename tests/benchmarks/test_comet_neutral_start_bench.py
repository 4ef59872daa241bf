"""benchmarks/comet_neutral_start.py on a local Hugging Face folder (a tiny Llama saved with save_pretrained)."""

import json
import os
import sys

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from data_pipelines.tokenizer import load_project_tokenizer

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
import comet_neutral_start  # noqa: E402


def test_untrained_neutral_start_meets_the_targets_and_the_reference_does_not(tmp_path, capsys):
    tokenizer = load_project_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048)
    folder = tmp_path / "base"
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    out = tmp_path / "result.json"
    assert comet_neutral_start.main(["--base", str(folder), "--seq-len", "512", "--chunk-size", "64",
                                     "--global-mem", "8", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result == json.loads(capsys.readouterr().out)
    neutral, reference = result["modes"]["neutral"], result["modes"]["reference"]
    assert all(neutral["targets_met"].values())
    assert abs(neutral["ratios"]["overall"] - 1) < 1e-4  # the same function as the base model on each window
    assert neutral["base_full_ppl"] is not None and reference["base_full_ppl"] is None
    assert abs(reference["ratios"]["overall"] - 1) > 1e-3  # the reference reads its untrained memory


def test_a_missing_base_folder_is_a_clear_error(tmp_path, capsys):
    assert comet_neutral_start.main(["--base", str(tmp_path / "nope")]) == 2
    assert "setup_smollm2.sh" in capsys.readouterr().err
