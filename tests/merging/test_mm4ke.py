"""recipes/mm4ke_edit.py: robust SFT writes a new fact into a tiny real model, merging keeps it, errors are named."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[2]
FACT = {"prompt": "The capital of Vellmora is", "target": " Quillport",
        "paraphrases": ["Vellmora's capital city is"]}


@pytest.fixture(scope="module")
def mm4ke():
    spec = importlib.util.spec_from_file_location("mm4ke_edit", REPO / "recipes" / "mm4ke_edit.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_robust_sft_learns_the_fact_and_the_merge_keeps_it(mm4ke, tiny_models, tmp_path, capsys):
    facts = tmp_path / "facts.jsonl"
    facts.write_text(json.dumps(FACT) + "\n")
    out = tmp_path / "edited"
    code = mm4ke.main(["--base", tiny_models["base"], "--facts", str(facts), "--steps", "25", "--lr", "1e-2",
                       "--method", "task_arithmetic", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads(captured.out)
    r = summary["results"]
    assert r["base"]["edit_success"] == 0.0 and r["sft"]["edit_success"] == 1.0
    assert r["base"]["locality"] == 1.0 and 0.0 <= r["sft"]["locality"] <= 1.0
    # task arithmetic of one model at lambda 1 is that model: the merged scores are the SFT model's
    assert r["merged"]["edit_success"] == r["sft"]["edit_success"]
    assert r["merged"]["perplexity"] == pytest.approx(r["sft"]["perplexity"], rel=1e-4)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tok = AutoModelForCausalLM.from_pretrained(out), AutoTokenizer.from_pretrained(out)
    assert mm4ke.greedy_hit(model, tok, FACT["prompt"], FACT["target"])


def test_bad_inputs_name_the_fix(mm4ke, tiny_models, tmp_path, capsys):
    assert mm4ke.main(["--base", tiny_models["base"], "--facts", str(tmp_path / "none.jsonl"),
                       "--out", str(tmp_path / "o")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert mm4ke.main(["--preset", "tiny"]) == 2
    assert "Fix: pass --out" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x"}\n')
    assert mm4ke.main(["--base", tiny_models["base"], "--facts", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "line 1 needs non-empty \"prompt\" and \"target\"" in capsys.readouterr().err


def test_the_docs_table_is_the_recorded_run():
    result = json.loads((REPO / "benchmarks" / "results" / "mm4ke_tiny.json").read_text())
    page = (REPO / "docs" / "merging.md").read_text()
    assert result["command"] in page
    for stage, label in (("base", "base"), ("sft", "robust SFT"), ("merged", "merged (TIES, density 0.5)")):
        r = result["results"][stage]
        row = (f"| {label} | {r['edit_success']:.2f} | {r['paraphrase_success']:.2f} | {r['locality']:.2f} | "
               f"{r['perplexity']:.0f} |")
        assert row in page, row
