"""A saved context autoencoder is a model kind of the registry: its directory is checked, it is
logged as the reconstruction pyfunc, and the registered model loads and reconstructs texts."""

import os
import shutil

import pytest
import torch

from framework.methods.registry import find_model_dir, load_saved_model
from framework.models.loading import NotACausalLMError, load_causal_lm
from framework.tracking.registry import RegistryError, check_model_dir, log_and_register, model_kind

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def ae_dir(tmp_path_factory):
    from transformers import AutoConfig, AutoModelForCausalLM

    from data_pipelines.tokenizer import load_project_tokenizer
    from framework.methods.autoencoder import save_model
    from framework.models.compression.autoencoder import ContextAutoencoder

    tok = load_project_tokenizer()
    lms = []
    for seed, hidden in ((0, 32), (1, 48)):
        cfg = AutoConfig.for_model("qwen3", vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                                   num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                                   head_dim=hidden // 4, max_position_embeddings=128)
        torch.manual_seed(seed)
        lms.append(AutoModelForCausalLM.from_config(cfg))
    directory = tmp_path_factory.mktemp("ae") / "model"
    save_model(ContextAutoencoder(*lms, slots=4), str(directory), tok)
    return str(directory)


def test_the_saved_directory_is_a_complete_autoencoder_and_found_as_one(ae_dir):
    assert model_kind(check_model_dir(ae_dir)).name == "context-autoencoder"
    assert find_model_dir(os.path.dirname(ae_dir)) == ae_dir   # not its encoder/ or decoder/ subfolder
    with pytest.raises(NotACausalLMError, match="autoencoder.*Fix"):
        load_causal_lm(ae_dir)
    assert type(load_saved_model(ae_dir)).__name__ == "ContextAutoencoder"


@pytest.mark.parametrize("remove", ["decoder/model.safetensors", "autoencoder.safetensors", "encoder/tokenizer.json"])
def test_an_incomplete_autoencoder_is_refused_with_the_fix(ae_dir, tmp_path, remove):
    broken = tmp_path / "broken"
    shutil.copytree(ae_dir, broken)
    os.remove(broken / remove)
    if remove.endswith("tokenizer.json"):
        os.remove(broken / "encoder" / "tokenizer_config.json")
    with pytest.raises(RegistryError, match=f"not a complete context-autoencoder checkpoint: missing {remove}.*"
                                            "ContextAutoencoder.save_pretrained"):
        check_model_dir(broken)


def test_the_registered_autoencoder_reconstructs_texts(ae_dir, mlflow_sqlite_tracking):
    import mlflow

    registered = log_and_register(ae_dir, registered_model_name="ae-test")
    model = mlflow.pyfunc.load_model(registered.uri)
    out = model.predict(["the house was quiet", "and the garden was green and wide"])
    assert len(out) == 2 and all(isinstance(o, str) for o in out)
    short = model.predict(["the house was quiet"], params={"max_new_tokens": 2})
    assert len(short) == 1


def test_longctx_eval_autoencoder_scores_a_saved_autoencoder(ae_dir, tmp_path):
    import json
    import subprocess
    import sys

    data = json.dumps({"kind": "entropy_text", "seq_len": 12, "temperature": [0.3, 3.0]})
    out = subprocess.run([sys.executable, "-m", "framework.cli", "eval", "autoencoder", "--model", ae_dir,
                          "--data", data, "--num-samples", "5", "--batch-size", "2", "--out", str(tmp_path / "ae")],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["num_samples"] == 5 and set(summary["means"]) >= {"f1", "bleu", "rouge_l", "encoder_entropy"}
    assert set(summary["correlations"]) == {"encoder", "decoder"}
    records = json.loads((tmp_path / "ae" / "autoencoder_records.json").read_text())["records"]
    assert len(records) == 5
    bad = subprocess.run([sys.executable, "-m", "framework.cli", "eval", "autoencoder", "--model",
                          os.path.join(ae_dir, "decoder"), "--data", data], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "not a context autoencoder" in bad.stderr and "Fix:" in bad.stderr
