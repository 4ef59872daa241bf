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
FACT_2 = {"prompt": "The glass harp-engine was invented by", "target": " Odile",
          "paraphrases": ["The inventor of the glass harp-engine was"]}


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
    # --rounds 1 (the default) writes the summary it always did: no "rounds" list
    assert set(summary) == {"facts", "locality_prompts", "method", "density", "lambda", "steps", "results", "out"}
    r = summary["results"]
    assert set(r) == {"base", "sft", "merged"}
    assert r["base"]["edit_success"] == 0.0 and r["sft"]["edit_success"] == 1.0
    assert r["base"]["locality"] == 1.0 and 0.0 <= r["sft"]["locality"] <= 1.0
    # task arithmetic of one model at lambda 1 is that model: the merged scores are the SFT model's
    assert r["merged"]["edit_success"] == r["sft"]["edit_success"]
    assert r["merged"]["perplexity"] == pytest.approx(r["sft"]["perplexity"], rel=1e-4)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tok = AutoModelForCausalLM.from_pretrained(out), AutoTokenizer.from_pretrained(out)
    assert mm4ke.greedy_hit(model, tok, FACT["prompt"], FACT["target"])


def test_sequential_edits_report_every_round(mm4ke, tiny_models, tmp_path, capsys):
    facts = tmp_path / "facts.jsonl"
    facts.write_text(json.dumps(FACT) + "\n" + json.dumps(FACT_2) + "\n")
    # 60 steps at 5e-3 learn each round's fact with a wide margin (target loss ~0.03); at 1e-2 the second
    # round's Adam stalled near loss 0.8 on one machine's CPU while it learned the fact on another's
    code = mm4ke.main(["--base", tiny_models["base"], "--facts", str(facts), "--rounds", "2", "--steps", "60",
                       "--lr", "5e-3", "--out", str(tmp_path / "edited")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads(captured.out)
    rounds = summary["rounds"]
    assert [e["round"] for e in rounds] == [1, 2]
    assert [(e["batch_facts"], e["edited_facts"]) for e in rounds] == [(1, 1), (1, 2)]  # round 2 covers both
    for entry in rounds:
        for stage in ("sft", "merged"):
            m = entry[stage]
            assert set(m) == {"edit_success", "edit_success_batch", "paraphrase_success", "locality", "perplexity"}
            for key in ("edit_success", "edit_success_batch", "paraphrase_success", "locality"):
                assert 0.0 <= m[key] <= 1.0, (entry["round"], stage, key)
            assert m["perplexity"] > 1.0
            # edit success is over the facts edited so far: a multiple of 1 / edited_facts
            assert (m["edit_success"] * entry["edited_facts"]) == pytest.approx(round(m["edit_success"]
                                                                                       * entry["edited_facts"]))
    # each round's R-SFT learns its own batch; round 1 has edited only its batch
    assert rounds[0]["sft"]["edit_success_batch"] == 1.0 and rounds[1]["sft"]["edit_success_batch"] == 1.0
    assert rounds[0]["merged"]["edit_success"] == rounds[0]["merged"]["edit_success_batch"]
    # the final results are the last round's models on every fact
    assert summary["results"]["merged"]["edit_success"] == rounds[1]["merged"]["edit_success"]
    assert summary["results"]["merged"]["perplexity"] == pytest.approx(rounds[1]["merged"]["perplexity"])


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
    assert mm4ke.main(["--preset", "tiny", "--rounds", "4", "--out", str(tmp_path / "o")]) == 2
    assert "--rounds 4 with 3 facts. Fix: pass --rounds between 1 and 3" in capsys.readouterr().err


def test_the_docs_table_is_the_recorded_run():
    result = json.loads((REPO / "benchmarks" / "results" / "mm4ke_tiny.json").read_text())
    page = (REPO / "docs" / "merging.md").read_text()
    assert result["command"] in page
    for stage, label in (("base", "base"), ("sft", "robust SFT"), ("merged", "merged (TIES, density 0.5)")):
        r = result["results"][stage]
        row = (f"| {label} | {r['edit_success']:.2f} | {r['paraphrase_success']:.2f} | {r['locality']:.2f} | "
               f"{r['perplexity']:.0f} |")
        assert row in page, row


def test_the_docs_sequential_table_is_the_recorded_run():
    result = json.loads((REPO / "benchmarks" / "results" / "mm4ke_tiny_sequential.json").read_text())
    page = (REPO / "docs" / "merging.md").read_text()
    assert result["command"] in page and "--rounds 3" in result["command"]
    assert [e["round"] for e in result["rounds"]] == [1, 2, 3]
    assert [e["edited_facts"] for e in result["rounds"]] == [1, 2, 3]
    for entry in result["rounds"]:
        for stage, label in (("sft", "robust SFT"), ("merged", "merged (TIES, density 0.5)")):
            m = entry[stage]
            row = (f"| {entry['round']} | {entry['edited_facts']} | {label} | {m['edit_success']:.2f} | "
                   f"{m['edit_success_batch']:.2f} | {m['paraphrase_success']:.2f} | {m['locality']:.2f} | "
                   f"{m['perplexity']:.0f} |")
            assert row in page, row
    # the final results are the last round's merged model on every fact
    assert result["results"]["merged"]["edit_success"] == result["rounds"][-1]["merged"]["edit_success"]
