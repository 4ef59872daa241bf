"""Fixtures for the MLflow tests: a tiny saved CoMeT model and a throwaway SQLite tracking store."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest


def tiny_tokenizer():
    """The project tokenizer when it is importable, else a byte-level BPE trained here in a second."""
    try:
        from data_pipelines.tokenizer import load_project_tokenizer
    except ImportError:
        load_project_tokenizer = None
    if load_project_tokenizer is not None:
        return load_project_tokenizer()

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    words = ["hello world", "a b c d e", "the quick brown fox", "memory tokens compress text"] * 50
    tok.train_from_iterator(words, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def save_tiny_comet(directory, seed: int = 0) -> str:
    """A two-layer random Qwen3 backbone wrapped in CoMeT, saved with its tokenizer."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from framework.models.comet import CoMeTConfig, CoMeTForCausalLM

    tok = tiny_tokenizer()
    torch.manual_seed(seed)
    cfg = Qwen3Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=4096,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    model = CoMeTForCausalLM.from_base(Qwen3ForCausalLM(cfg).eval(),
                                       CoMeTConfig(chunk_size=16, global_mem_size=4, temp_stride=4, temp_budget=8))
    model.save_pretrained(directory, tokenizer=tok)
    return str(directory)


@pytest.fixture(scope="session")
def tiny_comet_dir(tmp_path_factory) -> str:
    """A ``CoMeTForCausalLM.save_pretrained`` directory (safetensors + tokenizer files). Do not modify it."""
    return save_tiny_comet(tmp_path_factory.mktemp("tiny_comet") / "model")


@contextlib.contextmanager
def mlflow_sqlite_store(root):
    """Point MLflow (this process and its subprocesses) at ``sqlite:///<root>/mlflow.db`` with an
    experiment whose artifacts live in ``<root>/artifacts``; undo it all on exit. Yields
    ``(tracking_uri, experiment_id)``."""
    import mlflow

    os.makedirs(root, exist_ok=True)
    uri = f"sqlite:///{os.path.join(root, 'mlflow.db')}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        try:
            experiment_id = mlflow.MlflowClient(uri).create_experiment(
                "tests", artifact_location=Path(root, "artifacts").resolve().as_uri())
            mp.setenv("MLFLOW_EXPERIMENT_ID", experiment_id)
            yield uri, experiment_id
        finally:
            while mlflow.active_run() is not None:
                mlflow.end_run()
            mlflow.set_tracking_uri(None)  # back to "not set": MLflow reads MLFLOW_TRACKING_URI again


@pytest.fixture
def mlflow_sqlite_tracking(tmp_path):
    """``(tracking_uri, experiment_id)`` of a fresh SQLite store under tmp_path, active for one test."""
    with mlflow_sqlite_store(tmp_path / "mlflow") as store:
        yield store


@pytest.fixture(scope="session")
def mlflow_store_factory():
    """``mlflow_sqlite_store`` for fixtures of a wider scope than one test: ``with factory(root) as (uri, exp_id)``."""
    return mlflow_sqlite_store
