"""longctx eval harness: lm-evaluation-harness on a tiny CoMeT folder and a plain HF folder, offline:
RULER's niah_single_1 at one short length, rolling log-likelihood on a local text file (logged to an
active MLflow run), and one-line errors for bad inputs. Everything runs in-process, so lm-eval's RULER
module (slow to import: it builds ~6M word pairs) is imported once."""

import json
import math

import pytest
import torch

pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install 'longctx[eval]')")
torch.set_num_threads(1)

SMALL_COMET = {"chunk_size": 64, "global_mem_size": 4, "temp_stride": 8, "temp_budget": 16}
FAST = ["--limit", "2", "--max-gen-toks", "8", "--device", "cpu"]


def longctx(argv, capsys):
    from framework import cli

    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def comet_dir(tmp_path_factory):
    from data_pipelines.tokenizer import load_project_tokenizer
    from framework.eval.efficiency import build_tiny_model

    model, _ = build_tiny_model(seed=3, comet=SMALL_COMET)
    path = tmp_path_factory.mktemp("harness_comet")
    model.save_pretrained(str(path), tokenizer=load_project_tokenizer())
    return str(path)


@pytest.fixture(scope="module")
def plain_dir(tmp_path_factory):
    """A plain transformers Qwen3 folder (a baseline), saved the stock way."""
    from framework.job import tiny_qwen3
    from framework.methods.base_model import build_base_model, load_tokenizer

    cfg = tiny_qwen3()
    tokenizer = load_tokenizer(cfg)
    model = build_base_model(cfg, vocab_size=len(tokenizer), seed=5)
    path = tmp_path_factory.mktemp("harness_plain")
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return str(path)


@pytest.fixture(scope="module")
def text_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("harness_text")
    jsonl = root / "docs.jsonl"
    jsonl.write_text("".join(json.dumps({"text": f"Document {i}. The grass is green and the sky is blue. " * 4}) + "\n"
                             for i in range(3)))
    txt = root / "notes.txt"
    txt.write_text("It was a bright cold day in April.\nThe clocks were striking.\n\nA second paragraph, short.\n")
    return {"jsonl": str(jsonl), "txt": str(txt)}


def test_niah_single_1_on_comet_scores_per_length_and_loads_comet(comet_dir, tmp_path, capsys):
    out = tmp_path / "results.json"
    code, stdout, stderr = longctx(["eval", "harness", "--model", comet_dir, "--tasks", "niah_single_1",
                                    "--lengths", "512", *FAST, "--out", str(out)], capsys)
    assert code == 0, stderr
    summary = json.loads(stdout)  # stdout holds the JSON only (lm-eval's prints go to stderr)
    assert summary["model_class"] == "CoMeTForCausalLM" and summary["model_type"] == "longctx_comet"
    assert set(summary["results"]) == {"niah_single_1"}
    assert set(summary["results"]["niah_single_1"]) == {"512"}  # RULER's -1 for its unrun default lengths is dropped
    assert 0.0 <= summary["results"]["niah_single_1"]["512"] <= 1.0
    assert summary["n_samples"]["niah_single_1"] == {"512": 2}
    assert summary["lengths"] == [512] and summary["examples"]["niah_single_1"][0]["length"] == 512
    assert json.loads(out.read_text())["results"] == summary["results"]


def test_ruler_nltk_download_is_answered_locally():
    """lm-eval's RULER module calls nltk.download('punkt_tab') on import; offline runs answer it locally."""
    import nltk

    from framework.eval.harness import _no_nltk_download

    seen, original = [], nltk.download
    with _no_nltk_download(seen.append):
        assert nltk.download("punkt_tab") is False
    assert nltk.download is original and "punkt_tab" in seen[0]


def test_text_file_perplexity_on_comet_is_logged_to_the_active_run(comet_dir, text_files, tmp_path, capsys,
                                                                   monkeypatch):
    import mlflow

    monkeypatch.chdir(tmp_path)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(store)
    mlflow.set_experiment("harness-eval")
    with mlflow.start_run() as run:
        code, stdout, stderr = longctx(["eval", "harness", "--model", comet_dir, "--text-file", text_files["jsonl"],
                                        "--device", "cpu", "--out", str(tmp_path / "ppl")], capsys)
    assert code == 0, stderr
    summary = json.loads(stdout)
    scores = summary["results"]["local_text"]
    assert math.isfinite(scores["word_perplexity"]) and scores["word_perplexity"] > 1.0
    assert math.isfinite(scores["bits_per_byte"]) and summary["n_samples"]["local_text"] == 3
    assert summary["mlflow_run_id"] == run.info.run_id
    assert (tmp_path / "ppl" / "harness.json").exists()
    logged = mlflow.MlflowClient().get_run(run.info.run_id).data.metrics
    assert logged["eval/harness/local_text/word_perplexity"] == pytest.approx(scores["word_perplexity"])


def test_a_plain_hf_folder_runs_ruler_and_text(plain_dir, text_files, tmp_path, capsys):
    code, stdout, stderr = longctx(["eval", "harness", "--model", plain_dir, "--tasks", "niah_single_1",
                                    "--lengths", "512", "--text-file", text_files["txt"], "--limit", "1",
                                    "--max-gen-toks", "4", "--device", "cpu", "--out", str(tmp_path / "r.json")],
                                   capsys)
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["model_class"] == "Qwen3ForCausalLM"
    assert 0.0 <= summary["results"]["niah_single_1"]["512"] <= 1.0
    assert math.isfinite(summary["results"]["local_text"]["word_perplexity"])
    assert summary["n_samples"]["local_text"] == 1  # --limit 1 of the file's two paragraphs


@pytest.mark.parametrize("argv, needle", [
    (["--tasks", "not_a_task"], "--tasks not_a_task: not a task this command runs offline"),
    (["--tasks", "niah_single_2"], "downloads Paul Graham essays"),
    (["--tasks", "niah_single_1", "--lengths", "64"], "at least 256 tokens"),
    (["--tasks", "niah_single_1,ruler_vt", "--lengths", "512"], "ruler_vt needs 1024 tokens"),
    (["--tasks", "not_a_task", "--allow-download"], "has no such task"),
    (["--text-file", "/nonexistent/notes.txt"], "--text-file /nonexistent/notes.txt: no such file"),
    ([], "nothing to evaluate"),
])
def test_bad_inputs_give_one_line_errors(comet_dir, argv, needle, capsys):
    code, stdout, stderr = longctx(["eval", "harness", "--model", comet_dir, *argv], capsys)
    assert code == 2 and stdout == ""
    assert needle in stderr and "Traceback" not in stderr and "Fix:" in stderr


def test_a_missing_model_dir_is_a_clear_error(tmp_path, capsys):
    code, _, stderr = longctx(["eval", "harness", "--model", str(tmp_path / "nope"), "--tasks", "niah_single_1"],
                              capsys)
    assert code == 2 and "no such directory" in stderr and "Traceback" not in stderr


def test_missing_lm_eval_names_the_extra(monkeypatch):
    import importlib.util

    from framework.eval import harness

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "lm_eval" else real(name, *a))
    with pytest.raises(harness.HarnessError, match=r"pip install 'longctx\[eval\]'"):
        harness.require_lm_eval()
