"""longctx eval perplexity: output shape, bucket accounting, and streaming NLL == the full forward loss."""

import json
import math

import pytest
import torch

torch.set_num_threads(1)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SMALL_COMET = {"chunk_size": 64, "global_mem_size": 4, "temp_stride": 8, "temp_budget": 32}


def longctx(argv):
    from framework import cli

    return cli.main(argv)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from data_pipelines.tokenizer import load_project_tokenizer
    from framework.eval.efficiency import build_tiny_model

    model, _ = build_tiny_model(seed=1, comet=SMALL_COMET)
    path = tmp_path_factory.mktemp("tiny_comet")
    model.save_pretrained(str(path), tokenizer=load_project_tokenizer())
    return str(path)


def _run(argv, capsys):
    code = longctx(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_perplexity_json_buckets_and_files(model_dir, tmp_path, capsys):
    out = tmp_path / "ppl"
    code, stdout, _ = _run(["eval", "perplexity", "--model", model_dir, "--seq-len", "200", "--num-docs", "3",
                            "--buckets", "4", "--batch-size", "2", "--out", str(out)], capsys)
    assert code == 0
    summary = json.loads(stdout)  # the one JSON document on stdout
    assert summary["model"] == model_dir and summary["seq_len"] == 200 and summary["num_docs"] == 3
    assert [(b["start"], b["end"]) for b in summary["buckets"]] == [(0, 50), (50, 100), (100, 150), (150, 200)]
    assert sum(b["tokens"] for b in summary["buckets"]) == 3 * (200 - 1) == summary["tokens"]
    assert summary["buckets"][0]["tokens"] == 3 * 49  # position 0 is never predicted
    assert all(b["ppl"] > 1 and math.isfinite(b["ppl"]) for b in summary["buckets"])
    weighted = sum(b["nll"] * b["tokens"] for b in summary["buckets"]) / summary["tokens"]
    assert summary["overall_ppl"] == pytest.approx(math.exp(weighted), rel=1e-9)
    assert json.loads((out / "perplexity.json").read_text())["overall_ppl"] == summary["overall_ppl"]
    assert (out / "perplexity.png").read_bytes()[:8] == PNG_MAGIC


def test_streaming_perplexity_equals_full_forward_loss(model_dir, tmp_path, capsys):
    from data_pipelines.corpus import shipped_documents
    from data_pipelines.tokenizer import load_project_tokenizer
    from framework.models.comet import CoMeTForCausalLM

    text = shipped_documents()[2]["text"][:4000]
    doc = tmp_path / "doc.txt"
    doc.write_text(text)
    seq_len = 150  # two whole chunks of 64 and a partial one
    code, stdout, _ = _run(["eval", "perplexity", "--model", model_dir, "--text", str(doc), "--seq-len", str(seq_len),
                            "--num-docs", "1", "--buckets", "40,100", "--out", str(tmp_path / "o")], capsys)
    assert code == 0
    summary = json.loads(stdout)
    assert [(b["start"], b["end"]) for b in summary["buckets"]] == [(0, 40), (40, 100), (100, 150)]

    ids = torch.tensor([load_project_tokenizer()(text, add_special_tokens=False)["input_ids"][:seq_len]])
    model = CoMeTForCausalLM.from_pretrained(model_dir).eval()
    with torch.no_grad():
        out = model(input_ids=ids, labels=ids)
    assert summary["tokens"] == int(out.num_tokens) == seq_len - 1
    assert summary["overall_nll"] == pytest.approx(float(out.loss), abs=1e-4)
    assert summary["overall_ppl"] == pytest.approx(math.exp(float(out.loss)), rel=1e-4)
    per_token = torch.nn.functional.cross_entropy(out.logits[0, :-1].float(), ids[0, 1:], reduction="none")
    assert summary["buckets"][1]["nll"] == pytest.approx(float(per_token[39:99].mean()), abs=1e-4)


def test_data_spec_scores_labelled_positions_only(model_dir, tmp_path, capsys):
    from data_pipelines.factory import build_source
    from data_pipelines.tokenizer import load_project_tokenizer

    spec = {"kind": "passkey", "seq_len": 96, "num_samples": 4, "seed": 3}
    code, stdout, _ = _run(["eval", "perplexity", "--model", model_dir, "--data", json.dumps(spec), "--num-docs", "2",
                            "--buckets", "3", "--out", str(tmp_path / "o")], capsys)
    assert code == 0
    summary = json.loads(stdout)
    source = build_source(spec, load_project_tokenizer())
    labelled = sum(int((source[i]["labels"][1:] != -100).sum()) for i in range(2))
    assert summary["seq_len"] == 96 and summary["tokens"] == labelled > 0


@pytest.mark.parametrize("extra, needle", [
    (["--text", "/nonexistent/novels.jsonl"], "--text /nonexistent/novels.jsonl"),
    (["--buckets", "0,50,40"], "--buckets"),
    (["--data", "{not json"], "--data is not valid JSON"),
    (["--data", '{"kind": "passkey", "seq_len": 96}', "--seq-len", "64"], "disagrees"),
    (["--seq-len", "100000", "--num-docs", "50"], "lower --num-docs or --seq-len"),
])
def test_bad_input_exits_2_with_cause_and_fix(model_dir, tmp_path, capsys, extra, needle):
    code, stdout, stderr = _run(["eval", "perplexity", "--model", model_dir, "--out", str(tmp_path), *extra], capsys)
    assert code == 2
    assert needle in stderr and "Fix" in stderr
    assert stdout == ""
