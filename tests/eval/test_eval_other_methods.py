"""The eval commands also take the models of the other methods: a SWAT model and a sliding-window
baseline, saved as plain Hugging Face directories."""

import json
import math

import pytest
import torch

torch.set_num_threads(1)


def longctx(argv):
    from framework import cli

    return cli.main(argv)


@pytest.fixture(scope="module", params=["swat", "sliding"])
def saved(request, tmp_path_factory):
    from data_pipelines.tokenizer import load_project_tokenizer
    from framework.methods.causal_lm import save_hf_model

    tok = load_project_tokenizer()
    torch.manual_seed(0)
    if request.param == "swat":
        from framework.models.swat import SWATConfig, SWATForCausalLM

        model = SWATForCausalLM(SWATConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2,
                                           num_attention_heads=4, window=16))
    else:
        from transformers import LlamaConfig, LlamaForCausalLM

        from framework.models.sliding import sliding_window_model

        llama = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))
        model = sliding_window_model(llama, 16)
    path = tmp_path_factory.mktemp(request.param)
    save_hf_model(model, str(path), tok)
    return request.param, str(path), model


def test_perplexity_of_a_plain_causal_lm_equals_its_own_loss(saved, tmp_path, capsys):
    from data_pipelines.tokenizer import load_project_tokenizer

    kind, path, model = saved
    text = tmp_path / "doc.txt"
    text.write_text("It is a truth universally acknowledged, that a single man in possession of a good fortune, "
                    "must be in want of a wife. " * 6)
    code = longctx(["eval", "perplexity", "--model", path, "--text", str(text), "--seq-len", "96", "--num-docs", "1",
                    "--buckets", "2", "--out", str(tmp_path / "ppl")])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0 and summary["tokens"] == 95
    ids = load_project_tokenizer()(text.read_text(), add_special_tokens=False, return_tensors="pt")["input_ids"][:, :96]
    with torch.no_grad():
        loss = model.eval()(input_ids=ids, labels=ids).loss.item()
    assert summary["overall_ppl"] == pytest.approx(math.exp(loss), rel=1e-4)


def test_passkey_runs_on_a_plain_causal_lm(saved, tmp_path, capsys):
    kind, path, _ = saved
    code = longctx(["eval", "passkey", "--model", path, "--lengths", "128,256", "--depths", "0,1", "--trials", "1",
                    "--out", str(tmp_path / "pk")])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0 and set(summary["accuracy"]) == {"128", "256"}
    assert (tmp_path / "pk" / "passkey_heatmap.png").exists()
