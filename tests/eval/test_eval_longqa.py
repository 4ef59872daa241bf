"""longctx eval longqa: offline BABILong-style and needle samples, the same samples for every model, EM/F1 scoring,
the base model at full context and with an evaluation-time sliding window."""

from __future__ import annotations

import json
import re

import pytest

from data_pipelines.errors import DataConfigError
from data_pipelines.longqa import BABI_TASKS, make_samples


@pytest.fixture(scope="module")
def tok():
    from data_pipelines.tokenizer import load_project_tokenizer

    return load_project_tokenizer()


@pytest.mark.parametrize("task", BABI_TASKS + ("multi_needle", "multi_value"))
def test_samples_hold_their_facts_in_order_and_reach_the_length(tok, task):
    samples = make_samples(task, tok, 600, 3, seed=1)
    assert samples == make_samples(task, tok, 600, 3, seed=1)  # a pure function of (task, length, seed, index)
    for s in samples:
        tokens = len(tok(s.context)["input_ids"])
        assert 450 <= tokens <= 640, tokens
        positions = [s.context.index(f) for f in s.facts]
        assert positions == sorted(positions)
        assert s.answers and all(a for a in s.answers)


def test_babi_answers_follow_from_the_facts(tok):
    for s in make_samples("qa1", tok, 300, 10, seed=3):
        who = re.match(r"Where is (\w+)\?", s.question).group(1)
        last = [f for f in s.facts if f.startswith(who + " ")][-1]
        assert last.endswith(f"the {s.answers[0]}.")
    for s in make_samples("qa3", tok, 300, 10, seed=3):
        thing, later = re.match(r"Where was the (\w+) before the (\w+)\?", s.question).groups()
        assert s.answers[0] != later


def test_jsonl_records_and_bad_input(tmp_path, tok):
    path = tmp_path / "qa.jsonl"
    path.write_text(json.dumps({"context": "Ann lives in Oslo.", "question": "Where does Ann live?",
                                "answers": ["Oslo"]}) + "\n")
    [s] = make_samples(f"jsonl:{path}", tok, 1024, 5)
    assert s.answers == ["Oslo"] and s.context == "Ann lives in Oslo."
    path.write_text('{"context": "x"}\n')
    with pytest.raises(DataConfigError, match=r"qa.jsonl:1: .*'answers'"):
        make_samples(f"jsonl:{path}", tok, 1024, 5)
    with pytest.raises(DataConfigError, match="unknown"):
        make_samples("qa9", tok, 1024, 5)


def test_cli_compares_model_base_and_window_on_the_same_samples(tmp_path, capsys):
    from data_pipelines.tokenizer import load_project_tokenizer
    from framework import cli
    from framework.eval.efficiency import build_tiny_model

    model, _ = build_tiny_model(seed=1, comet={"chunk_size": 64, "global_mem_size": 4, "temp_stride": 8,
                                               "temp_budget": 16})
    model.save_pretrained(str(tmp_path / "m"), tokenizer=load_project_tokenizer())
    out = tmp_path / "out"
    code = cli.main(["eval", "longqa", "--model", str(tmp_path / "m"), "--tasks", "qa1,multi_needle",
                     "--lengths", "200", "--samples", "2", "--window", "32", "--max-new-tokens", "4",
                     "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads(captured.out)
    assert summary["model_class"] == "CoMeTForCausalLM"
    assert set(summary["scores"]) == {"model", "base_full", "base_window"}
    for per_task in summary["scores"].values():
        for task in ("qa1", "multi_needle"):
            cell = per_task[task]["200"]
            assert cell["n"] == 2 and 0.0 <= cell["em"] <= cell["f1"] + 1e-9 <= 1.0 + 1e-9
    assert (out / "longqa.json").is_file() and (out / "longqa_f1.png").read_bytes()[:4] == b"\x89PNG"
    questions = {(e["task"], e["question"]) for e in summary["examples"]}
    assert len(questions) == 2  # one first question per task, the same for the three models
