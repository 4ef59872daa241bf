"""PoC as a method: labels measured on Ray with a real (tiny) compressor and cached in the token-store
format (written once, reused by key, rebuilt when the key differs or the cache is incomplete), the
``poc_labels`` data kind and its held-out split, the LightningModule's loss, the saved predictor as a
registrable model kind, and ``longctx compress`` on it."""

import json
import os

import numpy as np
import pytest
import torch

from data_pipelines import build_source
from data_pipelines.loader import collate
from data_pipelines.poc_label_cache import LabelCache, cache_state, open_cache
from framework.config import ConfigError
from framework.job import DataConfig, OptimConfig, tiny_qwen3
from framework.studies.poc_labelling import LabelError, LabelJob, generate_labels, retention_from_scores
from framework.methods import poc

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.timeout(600)]
DATA = {"kind": "qa_facts", "seq_len": 64, "min_seq_len": 32, "num_samples": 12, "seed": 5}


@pytest.fixture(scope="module")
def tokenizer():
    from data_pipelines.tokenizer import load_project_tokenizer

    return load_project_tokenizer()


@pytest.fixture(scope="module")
def compressor_dir(tmp_path_factory, tokenizer):
    from transformers import AutoConfig, AutoModelForCausalLM

    from framework.models.compression.config import CompressorConfig
    from framework.models.compression.skeleton import CompressorForQA

    cfg = AutoConfig.for_model("qwen3", vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                               num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                               max_position_embeddings=512)
    torch.manual_seed(0)
    model = CompressorForQA(AutoModelForCausalLM.from_config(cfg), CompressorConfig(method="comi", encoder_layers=1))
    out = tmp_path_factory.mktemp("compressor")
    model.save_pretrained(out, tokenizer=tokenizer)
    return str(out)


@pytest.fixture(scope="module")
def labels(tmp_path_factory, compressor_dir):
    path = str(tmp_path_factory.mktemp("labels") / "cache")
    job = LabelJob(compressor=compressor_dir, data=dict(DATA), path=path, factors=[2, 4, 8], score="likelihood",
                   batch_size=4, shards=2)
    log = []
    cache, reused = generate_labels(job, log=log.append)
    assert not reused and "Ray task" in " ".join(log)
    return path, job, cache


def test_retention_is_capped_at_one_and_one_when_the_uncompressed_score_is_zero():
    scores = np.array([[0.5, 0.25, 0.6, 0.0], [0.0, 0.0, 1.0, 0.0]])  # full, f=2, f=8, f=4
    got = retention_from_scores(scores, [2, 8, 4])
    # columns by ratio ascending: 1/8, 1/4, 1/2, then 1.0
    np.testing.assert_allclose(got, [[1.0, 0.0, 0.5, 1.0], [1.0, 1.0, 1.0, 1.0]])


def test_labels_are_cached_as_a_token_store_with_a_manifest(labels, tokenizer):
    path, job, cache = labels
    assert len(cache) == 12 and cache.retention.shape == (12, 4)
    assert cache.ratios.tolist() == [0.125, 0.25, 0.5, 1.0]
    info = cache.manifest["poc_labels"]
    assert info["compressor"].startswith("dir:") and info["factors"] == [2, 4, 8] and info["score"] == "likelihood"
    assert cache.manifest["complete"] and cache.manifest["format"] == "longctx-token-store"
    assert ((cache.retention >= 0) & (cache.retention <= 1)).all() and (cache.retention[:, -1] == 1).all()
    source = build_source(DATA, tokenizer)
    lengths = cache.store.index[:, 1]
    assert len(set(lengths.tolist())) > 1  # min_seq_len: contexts of varied length
    for i in (0, 7):
        s = source[i]
        assert cache.context(i).tolist() == s["context_ids"][s["context_mask"]].tolist()


def test_a_second_generation_with_the_same_key_measures_nothing(labels):
    path, job, cache = labels
    before = os.stat(os.path.join(path, "labels.safetensors")).st_mtime_ns
    log = []
    again, reused = generate_labels(LabelJob(**{**job.__dict__, "data": dict(DATA)}), log=log.append)
    assert reused and again.key == cache.key and "reusing the complete cache" in log[0]
    assert not any("Ray task" in line for line in log)
    assert os.stat(os.path.join(path, "labels.safetensors")).st_mtime_ns == before


def test_another_key_or_an_incomplete_cache_is_rebuilt(labels, compressor_dir, tmp_path):
    path, job, cache = labels
    other = str(tmp_path / "other")
    first, _ = generate_labels(LabelJob(compressor=compressor_dir, data=dict(DATA, num_samples=6), path=other,
                                        factors=[2, 4], score="likelihood", shards=1), log=lambda *_: None)
    assert cache_state(other, cache.key) == "other_key" and open_cache(other, cache.key) is None
    manifest = os.path.join(other, "manifest.json")
    with open(manifest) as fh:
        data = json.load(fh)
    data["complete"] = False
    with open(manifest, "w") as fh:
        json.dump(data, fh)
    assert cache_state(other, first.key) == "incomplete" and open_cache(other, first.key) is None
    with pytest.raises(Exception, match="not a complete PoC label cache"):
        LabelCache(other)
    log = []
    rebuilt, reused = generate_labels(LabelJob(compressor=compressor_dir, data=dict(DATA, num_samples=6), path=other,
                                               factors=[2, 4], score="likelihood", shards=1), log=log.append)
    assert not reused and "is incomplete; measuring" in " ".join(log) and rebuilt.key == first.key
    assert cache_state(other, first.key) == "complete"


def test_a_folder_of_other_files_is_never_replaced(compressor_dir, tmp_path):
    from data_pipelines.errors import DataConfigError

    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(DataConfigError, match="not a PoC label cache"):
        generate_labels(LabelJob(compressor=compressor_dir, data=dict(DATA, num_samples=4), path=str(tmp_path),
                                 factors=[2], score="likelihood", shards=1), log=lambda *_: None)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_bad_label_settings_are_refused(compressor_dir, tmp_path):
    for kwargs, match in (({"factors": [1, 2]}, "factors"), ({"score": "rouge"}, "score"),
                          ({"data": {"kind": "passkey", "seq_len": 64}}, "question-answer")):
        job = LabelJob(**{"compressor": compressor_dir, "data": dict(DATA), "path": str(tmp_path / "x"), **kwargs})
        with pytest.raises(LabelError, match=match):
            generate_labels(job)
    with pytest.raises(LabelError, match="not a compressor directory"):
        generate_labels(LabelJob(compressor=str(tmp_path), data=dict(DATA), path=str(tmp_path / "y")))


def test_the_f1_score_answers_from_each_memory(compressor_dir, tokenizer):
    from framework.studies.poc_labelling import _load_compressor, score_batch

    model, tok, _ = _load_compressor(compressor_dir, None)
    source = build_source(DATA, tok)
    scores = score_batch(model, tok, collate([source[0], source[1]]), [2, 4], "f1", 4)
    assert scores.shape == (2, 3) and ((scores == 0) | (scores == 1) | ((scores > 0) & (scores < 1))).all()


def test_the_poc_labels_kind_holds_out_the_last_contexts(labels, tokenizer):
    path = labels[0]
    spec = {"kind": "poc_labels", "path": path, "seq_len": 64, "validation_fraction": 0.25}
    train, held = build_source(spec, tokenizer), build_source({**spec, "split": "validation"}, tokenizer)
    assert len(train) == 9 and len(held) == 3 and set(train.indices) & set(held.indices) == set()
    s = held[0]
    assert s["input_ids"].shape == (64,) and s["attention_mask"].sum() == len(labels[2].context(9))
    assert s["ratios"].tolist() == [0.125, 0.25, 0.5, 1.0] and s["retention"].shape == (4,)
    with pytest.raises(Exception, match="seq_len=8 is shorter"):
        build_source({**spec, "seq_len": 8}, tokenizer)


def _job(path):
    return poc.PoCJob(model=tiny_qwen3(hidden_size=32), poc=poc.PoCSettings(trunk_layers=1),
                      optim=OptimConfig(lr=1e-2, warmup_steps=0),
                      data=DataConfig(kind="poc_labels", seq_len=64, batch_size=4,
                                      options={"path": path, "validation_fraction": 0.25}))


def test_the_module_trains_on_the_mse_of_the_retention(labels, tokenizer):
    path = labels[0]
    cfg = _job(path)
    poc.validate(cfg)
    model = poc.build_model(cfg, tokenizer)
    assert model.poc_info["grid"] == [0.125, 0.25, 0.5, 1.0] and model.poc_info["compressor"].startswith("dir:")
    module = poc.PoCModule(model, cfg.optim, total_steps=4)
    batch = collate([build_source({"kind": "poc_labels", "path": path, "seq_len": 64}, tokenizer)[i] for i in range(4)])
    loss_sum, count = module.loss_sum(batch)
    assert int(count) == 16 and torch.isfinite(loss_sum)
    expected = ((model(batch["input_ids"], batch["attention_mask"], batch["ratios"].double())
                 - batch["retention"]) ** 2).mean()
    assert torch.allclose(loss_sum / count, expected)
    loss_sum.backward()
    assert model.head.weight.grad.abs().sum() > 0 and model.ratio_embed.weight.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match="poc_labels"):
        poc.validate(poc.PoCJob(data=DataConfig(kind="qa_facts", seq_len=64)))
    with pytest.raises(ConfigError, match="trunk_layers"):
        poc.PoCSettings(trunk_layers=0)


@pytest.fixture(scope="module")
def saved_predictor(labels, tokenizer, tmp_path_factory):
    cfg = _job(labels[0])
    model = poc.build_model(cfg, tokenizer)
    out = str(tmp_path_factory.mktemp("predictor") / "model")
    poc.save_model(model, out, tokenizer)
    return out


def test_the_saved_predictor_is_a_self_contained_registrable_kind(saved_predictor, tmp_path):
    import shutil

    from framework.methods.registry import find_model_dir
    from framework.tracking.registry import RegistryError, check_model_dir, model_kind

    assert model_kind(saved_predictor).name == "poc-predictor"
    check_model_dir(saved_predictor)
    assert find_model_dir(os.path.dirname(saved_predictor)) == saved_predictor
    loaded = poc.load_model(saved_predictor)
    assert loaded.poc_info["grid"] == [0.125, 0.25, 0.5, 1.0]
    broken = tmp_path / "broken"
    shutil.copytree(saved_predictor, broken)
    shutil.rmtree(broken / "compressor")
    with pytest.raises(RegistryError, match="compressor/compressor_config.json"):
        check_model_dir(broken)


def _compress(argv, capsys):
    from framework.cli import main

    code = main(["compress", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_longctx_compress_picks_a_ratio_that_meets_the_floor(saved_predictor, tmp_path, capsys):
    from framework.models.compression.poc_pipeline import PoCPipeline

    inputs = tmp_path / "in.jsonl"
    rows = [{"context": "pear: 41907. plum: 22815. fig: 30501. " * 4, "question": "What is the value of plum?"},
            {"input": "amber: 11111. cedar: 22222.", "prompt": "What is the value of cedar?"},
            {"context": "willow: 33333. " * 10}]
    inputs.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    for floor in (0.0, 0.5, 0.99):
        code, out, err = _compress(["--model", saved_predictor, "--floor", str(floor), str(inputs),
                                    "--out", str(tmp_path / "mem.safetensors")], capsys)
        assert code == 0, err
        lines = [json.loads(line) for line in out.strip().splitlines()]
        assert [line["line"] for line in lines] == [1, 2, 3]
        pipe = PoCPipeline.from_pretrained(saved_predictor)
        for line in lines:
            assert 0 < line["ratio"] <= 1 and line["ratio"] >= pipe.grid[0]
            assert line["predicted_retention"] >= floor or line["ratio"] == 1.0
            assert line["memory_slots"] <= line["context_tokens"]
        assert "answer" in lines[0] and "answer" in lines[1] and "answer" not in lines[2]
    from safetensors.torch import load_file

    assert set(load_file(str(tmp_path / "mem.safetensors"))) == {"memory_1", "memory_2", "memory_3"}


def test_longctx_compress_errors_name_the_cause(saved_predictor, compressor_dir, tmp_path, capsys):
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"context": "pear: 41907."}) + "\n")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"context": "pear: 41907."}) + "\n{not json\n")
    cases = [(["--model", saved_predictor, "--floor", "1.5", str(good)], "--floor 1.5"),
             (["--model", saved_predictor, "--floor", "0.9", str(tmp_path / "absent.jsonl")], "no such file"),
             (["--model", saved_predictor, "--floor", "0.9", str(bad)], "line 2 is not JSON"),
             (["--model", compressor_dir, "--floor", "0.9", str(good)], "is not a PoC predictor")]
    for argv, match in cases:
        code, _, err = _compress(argv, capsys)
        assert code == 2 and match in err and "Fix:" in err, err
