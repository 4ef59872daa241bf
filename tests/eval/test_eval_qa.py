"""longctx eval qa: SQuAD scoring, the JSON summary for RAM and COMI, truncation's budget, JSONL data,
bad input (exit 2), MLflow logging, and chance-level scores for a model that cannot know the answer.

The compressors are random (untrained) tiny Qwen3s: these tests check the accounting, not accuracy.
MLflow's process-wide settings are put back after each test by tests/eval/conftest.py (autouse).
"""

import json

import pytest

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FAST = ["--seq-len", "128", "--num-samples", "4", "--batch-size", "4", "--max-new-tokens", "4"]


def longctx(argv, capsys):
    from framework import cli

    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """{"comi": dir, "ram": dir, "causal": dir}: two tiny random compressors and the causal LM under them."""
    from data_pipelines.tokenizer import load_project_tokenizer
    from framework.job import tiny_qwen3
    from framework.methods.base_model import build_base_model
    from framework.models.compression.config import CompressorConfig
    from framework.models.compression.skeleton import CompressorForQA

    tok = load_project_tokenizer()
    base = build_base_model(tiny_qwen3(), vocab_size=len(tok))
    root = tmp_path_factory.mktemp("qa_models")
    dirs = {name: str(root / name) for name in ("comi", "ram", "causal")}
    CompressorForQA(base, CompressorConfig(method="comi", encoder_layers=1, ratio=8)).save_pretrained(
        dirs["comi"], tokenizer=tok)
    CompressorForQA(base, CompressorConfig(method="ram", encoder_layers=1, segment_size=16)).save_pretrained(
        dirs["ram"], tokenizer=tok)
    base.save_pretrained(dirs["causal"])
    tok.save_pretrained(dirs["causal"])
    return dirs


# ---------------------------------------------------------------------------------------- scoring
def test_normalize_answer_is_squad_normalisation():
    from framework.metrics.qa_scoring import normalize_answer

    assert normalize_answer("  The Cat,  sat on a mat! ") == "cat sat on mat"
    assert normalize_answer("An apple; THE end.") == "apple end"
    assert normalize_answer("theatre another") == "theatre another"  # articles only as whole words
    assert normalize_answer("04817.") == "04817"
    assert normalize_answer("...") == ""


def test_exact_match_is_the_best_over_the_answers():
    from framework.metrics.qa_scoring import exact_match

    assert exact_match("The Eiffel Tower.", ["eiffel tower"]) == 1.0
    assert exact_match("Paris", ["London", "paris!", "Rome"]) == 1.0
    assert exact_match("Paris, France", ["Paris"]) == 0.0
    assert exact_match("Paris", "paris") == 1.0  # one answer as a string
    assert exact_match("anything", []) == 0.0


def test_f1_on_hand_computed_examples():
    from framework.metrics.qa_scoring import f1

    # "the" is dropped: prediction {cat, sat}, answer {cat, sat, down}: precision 2/2, recall 2/3
    assert f1("the cat sat", ["cat sat down"]) == pytest.approx(0.8)
    assert f1("the cat sat", ["dog", "cat sat down", "cat"]) == pytest.approx(0.8)  # the best answer counts
    assert f1("cat cat", ["cat"]) == pytest.approx(2 * 0.5 * 1 / 1.5)  # repeats count once per match
    assert f1("dog", ["cat"]) == 0.0
    assert f1("the", ["a"]) == 1.0 and f1("the", ["cat"]) == 0.0  # both empty after normalising: a match


def test_parse_ratios():
    from framework.eval.qa import QAArgumentError, parse_ratios

    assert parse_ratios("16,4, 8,4") == [4.0, 8.0, 16.0]
    for bad in ("4,abc", "0.5", "", "nan"):
        with pytest.raises(QAArgumentError, match="--ratios"):
            parse_ratios(bad)


# ---------------------------------------------------------------------------------------- the command
SETTING_KEYS = {"exact_match", "f1", "ratio", "compress_ms", "decode_ms"}
RUN_RATIOS = {"comi": ("2", "4", "8"), "ram": ("1", "4", "16")}  # RAM: keep all, keep some, skim all (L = 16)


@pytest.fixture(scope="module")
def runs(models, tmp_path_factory):
    """One `longctx eval qa` run per method, shared by the tests below: {method: (code, summary, stderr, out)}."""
    import contextlib
    import io

    from framework import cli

    results = {}
    for method, ratios in RUN_RATIOS.items():
        out = tmp_path_factory.mktemp(f"qa_{method}")
        stdout, stderr = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = cli.main(["eval", "qa", "--model", models[method], "--ratios", ",".join(ratios), "--out", str(out),
                             *FAST])
        results[method] = (code, json.loads(stdout.getvalue()) if code == 0 else None, stderr.getvalue(), out)
    return results


@pytest.mark.parametrize("method", ["comi", "ram"])
def test_summary_shape_files_and_truncation_budget(models, runs, method):
    code, summary, stderr, out = runs[method]
    assert code == 0, stderr
    assert "qa samples 1-4/4" in stderr  # progress on stderr
    assert summary["model"] == models[method] and summary["method"] == method and summary["num_samples"] == 4
    assert summary["data"]["kind"] == "qa_facts" and summary["data"]["seed"] == 12345
    assert summary["data"]["seq_len"] == 128
    assert set(summary["uncompressed"]) == SETTING_KEYS and summary["uncompressed"]["ratio"] == 1.0
    assert set(summary["ratios"]) == set(RUN_RATIOS[method])  # every requested ratio
    for row in summary["ratios"].values():
        assert set(row) == {"compressed", "truncation"}
        assert SETTING_KEYS <= set(row["compressed"]) and set(row["truncation"]) == SETTING_KEYS
        # truncation keeps, per sample, as many tokens as the compressor's memory has slots
        assert row["truncation"]["ratio"] == pytest.approx(row["compressed"]["ratio"], abs=1e-3)
        for setting in row.values():
            assert 0.0 <= setting["exact_match"] <= setting["f1"] <= 1.0
            assert setting["compress_ms"] >= 0 and setting["decode_ms"] > 0
        if method == "ram":
            assert "answer_segment_recall" in row["compressed"]
        else:
            assert "answer_segment_recall" not in row["compressed"]
    assert json.loads((out / "qa.json").read_text())["ratios"] == summary["ratios"]
    assert (out / "qa.png").read_bytes()[:8] == PNG_MAGIC


def test_comi_achieved_ratio_rises_with_the_requested_one(runs):
    ratios = runs["comi"][1]["ratios"]
    achieved = [ratios[r]["compressed"]["ratio"] for r in RUN_RATIOS["comi"]]
    assert achieved == sorted(achieved) and len(set(achieved)) == len(achieved)
    for requested, got in zip(RUN_RATIOS["comi"], achieved):
        assert 0.85 * float(requested) <= got <= float(requested)  # ceil(n / r) slots: at most r tokens per slot


def test_ram_recall_counts_the_evidence_segments(runs):
    ratios = runs["ram"][1]["ratios"]
    # ratio 1 keeps every segment: the whole context, so recall 1; 16 (the segment size) skims them all: recall 0
    assert ratios["1"]["compressed"]["ratio"] == 1.0 and ratios["1"]["compressed"]["answer_segment_recall"] == 1.0
    assert ratios["16"]["compressed"]["answer_segment_recall"] == 0.0
    assert 1.0 < ratios["4"]["compressed"]["ratio"] < ratios["16"]["compressed"]["ratio"]
    assert 0.0 <= ratios["4"]["compressed"]["answer_segment_recall"] <= 1.0


def test_a_jsonl_file_as_data(models, tmp_path, capsys):
    path = tmp_path / "dev.jsonl"
    records = [{"input": f"The weather was mild. The code of door {i} is {40000 + i}. Nobody came.",
                "prompt": f"What is the code of door {i}?", "answer": [str(40000 + i), f"code {40000 + i}"]}
               for i in range(3)]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    code, stdout, stderr = longctx(["eval", "qa", "--model", models["comi"], "--data", str(path), "--seq-len", "64",
                                    "--ratios", "2,4", "--num-samples", "8", "--max-new-tokens", "3",
                                    "--out", str(tmp_path / "o")], capsys)
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["num_samples"] == 3  # the file holds fewer than --num-samples: all of them
    assert summary["data"]["kind"] == "qa_jsonl" and summary["data"]["path"] == str(path)
    assert summary["data"]["seq_len"] == 64
    assert set(summary["ratios"]) == {"2", "4"}
    assert summary["examples"][0]["answers"] == ["40000", "code 40000"]


@pytest.mark.parametrize("argv, needle", [
    (["--ratios", "4,abc"], "--ratios"),
    (["--ratios", "4,0.5"], "--ratios"),
    (["--num-samples", "0"], "--num-samples"),
    (["--data", "no/such/file.jsonl"], "--data"),
    (["--data", "{\"kind\": \"qa_facts\""], "--data"),
    (["--data", "{\"kind\": \"synthetic\", \"seq_len\": 128}"], "qa_facts"),
])
def test_bad_flags_exit_2_with_one_line(models, tmp_path, capsys, argv, needle):
    code, stdout, stderr = longctx(["eval", "qa", "--model", models["comi"], "--out", str(tmp_path), *argv], capsys)
    assert code == 2 and stdout == ""
    errors = [line for line in stderr.splitlines() if line.startswith("longctx: error:")]
    assert len(errors) == 1 and needle in errors[0] and "Fix" in errors[0]


def test_a_causal_lm_is_refused_with_exit_2(models, tmp_path, capsys):
    code, stdout, stderr = longctx(["eval", "qa", "--model", models["causal"], "--out", str(tmp_path), *FAST], capsys)
    assert code == 2 and stdout == ""
    errors = [line for line in stderr.splitlines() if line.startswith("longctx: error:")]
    assert len(errors) == 1 and "not a RAM/COMI compressor" in errors[0]


def test_metrics_and_files_are_logged_to_the_active_run(models, tmp_path, capsys):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    mlflow.set_experiment("qa-eval")
    with mlflow.start_run() as run:
        code, stdout, stderr = longctx(["eval", "qa", "--model", models["ram"], "--ratios", "8", "--seq-len", "64",
                                        "--num-samples", "2", "--max-new-tokens", "2", "--out", str(tmp_path / "o")],
                                       capsys)
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["mlflow_run_id"] == run.info.run_id
    client = mlflow.MlflowClient()
    metrics = client.get_run(run.info.run_id).data.metrics
    assert metrics["eval/qa/compressed/8/exact_match"] == summary["ratios"]["8"]["compressed"]["exact_match"]
    assert metrics["eval/qa/truncation/8/ratio"] == pytest.approx(summary["ratios"]["8"]["truncation"]["ratio"])
    expected = {"eval/qa/uncompressed/f1", "eval/qa/compressed/8/compress_ms", "eval/qa/truncation/8/decode_ms",
                "eval/qa/compressed/8/answer_segment_recall"}
    assert expected <= set(metrics)
    names = {f.path for f in client.list_artifacts(run.info.run_id, "eval/qa")}
    assert {"eval/qa/qa.json", "eval/qa/qa.png"} <= names


def test_a_model_that_cannot_know_the_answer_scores_at_chance(models, tmp_path, capsys):
    # a random untrained decoder guessing 5 random digits: exact match by chance is 1e-5 per sample
    code, stdout, stderr = longctx(["eval", "qa", "--model", models["comi"], "--seq-len", "64", "--ratios", "8",
                                    "--num-samples", "16", "--batch-size", "16", "--max-new-tokens", "7",
                                    "--out", str(tmp_path)], capsys)
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["num_samples"] == 16
    assert summary["uncompressed"]["exact_match"] <= 1 / 16
    assert summary["ratios"]["8"]["compressed"]["exact_match"] <= 1 / 16
