"""longctx eval perplexity --compare-base: CoMeT, its base model on each window alone and at full context,
on the same tokens; each equals an independent computation, and the report adds up."""

import dataclasses
import json
import math

import pytest
import torch

torch.set_num_threads(1)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CHUNK = 64
SMALL_COMET = {"chunk_size": CHUNK, "global_mem_size": 4, "temp_stride": 8, "temp_budget": 32}
SEQ_LEN = 150  # two whole windows of 64 and a partial one (the last token predicts nothing)


def longctx(argv, capsys):
    from framework import cli

    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _tiny_llama(max_positions: int = 256):
    from transformers import LlamaConfig, LlamaForCausalLM

    from data_pipelines.tokenizer import load_project_tokenizer

    cfg = LlamaConfig(vocab_size=len(load_project_tokenizer()), hidden_size=64, intermediate_size=128,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=max_positions)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()


def _comet(family: str, **overrides):
    from framework.eval.efficiency import build_tiny_model
    from framework.models.comet import CoMeTConfig, CoMeTForCausalLM

    comet = {**SMALL_COMET, **overrides}
    if family == "qwen3":
        return build_tiny_model(seed=1, comet=comet)[0]
    torch.manual_seed(1)
    return CoMeTForCausalLM.from_base(_tiny_llama(), CoMeTConfig(**comet)).eval()


def _has_neutral_start() -> bool:
    from framework.models.comet import CoMeTConfig

    return "neutral_start" in {f.name for f in dataclasses.fields(CoMeTConfig)}


@pytest.fixture(scope="module", params=["qwen3", "llama"])
def comet_model(request):
    """The reference formulation, whose memory and compression rows change what text reads: CoMeT != base."""
    return _comet(request.param, **({"neutral_start": False} if _has_neutral_start() else {}))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from data_pipelines.tokenizer import load_project_tokenizer

    path = tmp_path_factory.mktemp("tiny_comet")
    _comet("qwen3").save_pretrained(str(path), tokenizer=load_project_tokenizer())
    return str(path)


def _docs(count: int = 2, seq_len: int = SEQ_LEN, mask: slice | None = None):
    """Windows of the shipped novels as (input_ids, labels); `mask` sets those labels to -100 in the first."""
    from data_pipelines.corpus import shipped_corpus_path
    from data_pipelines.tokenizer import load_project_tokenizer
    from framework.eval.perplexity import text_documents

    windows, _ = text_documents(shipped_corpus_path(), load_project_tokenizer(), seq_len, count)
    docs = [(torch.tensor(w), torch.tensor(w)) for w in windows]
    if mask is not None:
        docs[0][1][mask] = -100
    return docs


def _nll_sum(logits, targets) -> float:
    keep = targets != -100
    return float(torch.nn.functional.cross_entropy(logits.float()[keep], targets[keep], reduction="sum"))


def _own_window_nll(backbone, ids, labels, chunk):
    """Per window k: the summed NLL of tokens k*c+1 .. (k+1)*c from the backbone run on window k alone."""
    sums = []
    with torch.no_grad():
        for start in range(0, len(ids) - 1, chunk):
            end = min(start + chunk, len(ids) - 1)
            logits = backbone(input_ids=ids[None, start:end]).logits[0]
            sums.append(_nll_sum(logits, labels[start + 1:end + 1]))
    return sums


def _total_nll(report) -> float:
    return report["overall_nll"] * report["tokens"]


# ---------------------------------------------------------------------------------------- equal to independent runs
def test_base_window_equals_the_backbone_on_each_window_alone(comet_model):
    from framework.eval.perplexity import compare_with_base

    docs = _docs(mask=slice(70, 90))
    report = compare_with_base(comet_model, docs, buckets="3", batch_size=2)
    per_window = [_own_window_nll(comet_model.backbone, ids, labels, CHUNK) for ids, labels in docs]
    window = report["base_window"]
    assert window["status"] == "ok"
    assert window["tokens"] == sum(int((labels[1:] != -100).sum()) for _, labels in docs) == 2 * (SEQ_LEN - 1) - 20
    assert _total_nll(window) == pytest.approx(sum(map(sum, per_window)), rel=1e-4)
    for k, chunk in enumerate(window["chunks"]):  # chunk k holds what window k predicts
        assert chunk["nll"] * chunk["tokens"] == pytest.approx(sum(doc[k] for doc in per_window), rel=1e-4)


def test_base_full_equals_the_backbones_plain_forward(comet_model):
    from framework.eval.perplexity import compare_with_base

    docs = _docs()
    report = compare_with_base(comet_model, docs, buckets="3", batch_size=2)
    with torch.no_grad():
        losses = [float(comet_model.backbone(input_ids=ids[None], labels=ids[None]).loss) for ids, _ in docs]
    full = report["base_full"]
    assert full["status"] == "ok" and full["tokens"] == 2 * (SEQ_LEN - 1)
    assert full["overall_nll"] == pytest.approx(sum(losses) / 2, rel=1e-4)


def test_comet_equals_its_own_streaming_perplexity(comet_model):
    from data_pipelines.tokenizer import load_project_tokenizer
    from framework.eval.perplexity import compare_with_base, text_perplexity

    alone = text_perplexity(comet_model, load_project_tokenizer(), SEQ_LEN, num_docs=2, buckets="3")
    report = compare_with_base(comet_model, _docs(), buckets="3")
    assert report["comet"]["overall_nll"] == pytest.approx(alone["overall_nll"], rel=1e-6)
    assert [b["nll"] for b in report["comet"]["buckets"]] == pytest.approx([b["nll"] for b in alone["buckets"]])


def test_a_comet_model_whose_memory_does_nothing_reads_like_base_window():
    """neutral_start: the untrained wrapper reads text as the base model reads a window of chunk_size."""
    from framework.eval.perplexity import compare_with_base

    if not _has_neutral_start():
        pytest.skip("this CoMeT has no neutral_start")
    report = compare_with_base(_comet("qwen3", neutral_start=True), _docs(count=1), buckets="3")
    ratios = report["ratios"]["comet_over_base_window"]
    assert ratios["overall"] == pytest.approx(1, abs=1e-4)
    assert ratios["chunk_0"] == pytest.approx(1, abs=1e-4) and ratios["chunks_1_plus"] == pytest.approx(1, abs=1e-4)
    assert report["ratios"]["comet_over_base_full"]["chunk_0"] == pytest.approx(1, abs=1e-4)  # no earlier context
    reference = compare_with_base(_comet("qwen3", neutral_start=False), _docs(count=1), buckets="3")
    assert abs(reference["ratios"]["comet_over_base_window"]["chunks_1_plus"] - 1) > 1e-3  # the comparison sees it


# ---------------------------------------------------------------------------------------- the report adds up
def test_chunks_cover_every_token_and_ratios_are_those_of_the_reported_ppls(comet_model):
    from framework.eval.perplexity import compare_with_base

    report = compare_with_base(comet_model, _docs(), buckets="4")
    for key in ("comet", "base_window", "base_full"):
        model = report[key]
        chunks = model["chunks"]
        assert [c["chunk"] for c in chunks] == [0, 1, 2]
        assert [(c["start"], c["end"]) for c in chunks] == [(1, 65), (65, 129), (129, SEQ_LEN)]
        assert sum(c["tokens"] for c in chunks) == model["tokens"] == sum(b["tokens"] for b in model["buckets"])
        assert chunks[0]["tokens"] == 2 * CHUNK  # chunk 0: every token the first window predicts
        later = sum(c["nll"] * c["tokens"] for c in chunks[1:]) / sum(c["tokens"] for c in chunks[1:])
        assert model["chunks_1_plus_ppl"] == pytest.approx(math.exp(later), rel=1e-9)
    comet = report["comet"]
    for key in ("base_window", "base_full"):
        base, ratios = report[key], report["ratios"][f"comet_over_{key}"]
        per_chunk = [a["ppl"] / b["ppl"] for a, b in zip(comet["chunks"], base["chunks"])]
        assert ratios["overall"] == pytest.approx(comet["overall_ppl"] / base["overall_ppl"], rel=1e-12)
        assert ratios["chunk_0"] == pytest.approx(per_chunk[0], rel=1e-12)
        assert ratios["chunks_1_plus"] == pytest.approx(comet["chunks_1_plus_ppl"] / base["chunks_1_plus_ppl"])
        assert ratios["max_chunk"] == pytest.approx(max(per_chunk))
        assert per_chunk[ratios["max_chunk_index"]] == pytest.approx(max(per_chunk))


def test_base_full_is_not_run_beyond_max_position_embeddings_by_default():
    from framework.eval.perplexity import compare_with_base

    model = _comet("llama")  # max_position_embeddings 256
    report = compare_with_base(model, _docs(count=1, seq_len=300), buckets="2")
    assert report["base_full"] == {"status": "not run: seq_len 300 > --base-full-max-len 256 "
                                             "(the base model's max_position_embeddings)"}
    assert report["ratios"]["comet_over_base_full"] is None
    assert report["base_window"]["status"] == "ok"
    off = compare_with_base(model, _docs(count=1), buckets="2", base_full_max_len=0)
    assert off["base_full"]["status"].startswith("not run: --base-full-max-len 0")


def test_out_of_memory_in_base_full_is_reported(comet_model, monkeypatch):
    from framework.eval import perplexity

    def oom(*_args, **_kwargs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 64.00 GiB")

    monkeypatch.setattr(perplexity, "full_attention_document_nll", oom)
    report = perplexity.compare_with_base(comet_model, _docs(count=1), buckets="2")
    assert report["base_full"] == {"status": "out of memory"}
    assert report["comet"]["status"] == report["base_window"]["status"] == "ok"

    def other(*_args, **_kwargs):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(perplexity, "full_attention_document_nll", other)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        perplexity.compare_with_base(comet_model, _docs(count=1), buckets="2")


# ---------------------------------------------------------------------------------------- command line
def test_cli_writes_one_json_with_all_three_and_logs_them(model_dir, tmp_path, capsys, monkeypatch):
    import mlflow

    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_experiment("perplexity-compare")
    out = tmp_path / "cmp"
    argv = ["eval", "perplexity", "--model", model_dir, "--seq-len", str(SEQ_LEN), "--num-docs", "2",
            "--batch-size", "2", "--buckets", "3"]
    with mlflow.start_run() as run:
        code, stdout, stderr = longctx([*argv, "--compare-base", "--out", str(out)], capsys)
    assert code == 0, stderr
    summary = json.loads(stdout)
    compare = summary["compare"]
    assert [compare[key]["status"] for key in ("comet", "base_window", "base_full")] == ["ok", "ok", "ok"]
    assert set(compare["ratios"]) == {"comet_over_base_window", "comet_over_base_full"}
    assert summary["overall_ppl"] == compare["comet"]["overall_ppl"]
    assert summary["buckets"] == compare["comet"]["buckets"]
    assert json.loads((out / "perplexity.json").read_text())["compare"] == compare
    assert (out / "perplexity.png").read_bytes()[:8] == PNG_MAGIC
    metrics = mlflow.MlflowClient().get_run(run.info.run_id).data.metrics
    assert metrics["eval/perplexity/base_window/overall_ppl"] == pytest.approx(compare["base_window"]["overall_ppl"])
    assert metrics["eval/perplexity/base_full/overall_ppl"] == pytest.approx(compare["base_full"]["overall_ppl"])
    assert metrics["eval/perplexity/overall_ppl"] == pytest.approx(summary["overall_ppl"])

    code, stdout, _ = longctx([*argv, "--out", str(tmp_path / "plain")], capsys)  # the same top level without it
    assert code == 0
    plain = json.loads(stdout)
    assert "compare" not in plain and plain["overall_ppl"] == pytest.approx(summary["overall_ppl"], rel=1e-9)


def test_cli_base_full_max_len_below_seq_len_says_why(model_dir, tmp_path, capsys):
    code, stdout, stderr = longctx(["eval", "perplexity", "--model", model_dir, "--seq-len", str(SEQ_LEN),
                                    "--num-docs", "1", "--compare-base", "--base-full-max-len", "100",
                                    "--out", str(tmp_path)], capsys)
    assert code == 0, stderr
    compare = json.loads(stdout)["compare"]
    assert compare["base_full"] == {"status": f"not run: seq_len {SEQ_LEN} > --base-full-max-len 100"}
    assert compare["ratios"]["comet_over_base_full"] is None
    assert compare["ratios"]["comet_over_base_window"]["overall"] > 0


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    from data_pipelines.tokenizer import load_project_tokenizer

    path = tmp_path_factory.mktemp("tiny_llama")
    _tiny_llama().save_pretrained(str(path))
    load_project_tokenizer().save_pretrained(str(path))
    return str(path)


def test_compare_base_on_a_plain_causal_lm_fails_with_the_fix(llama_dir, tmp_path, capsys):
    from framework.eval.perplexity import PerplexityArgumentError, compare_with_base

    code, stdout, stderr = longctx(["eval", "perplexity", "--model", llama_dir, "--seq-len", "100",
                                    "--num-docs", "1", "--compare-base", "--out", str(tmp_path)], capsys)
    assert code == 2 and stdout == ""
    assert "--compare-base" in stderr and "LlamaForCausalLM, not a CoMeT model" in stderr and "Fix" in stderr
    with pytest.raises(PerplexityArgumentError, match="not a CoMeT model"):
        compare_with_base(_tiny_llama(), _docs(count=1))


@pytest.mark.parametrize("extra, needle", [
    (["--base-full-max-len", "100"], "only applies with --compare-base"),
    (["--compare-base", "--base-full-max-len", "-1"], "--base-full-max-len -1"),
])
def test_bad_base_full_max_len_exits_2(model_dir, tmp_path, capsys, extra, needle):
    code, stdout, stderr = longctx(["eval", "perplexity", "--model", model_dir, "--out", str(tmp_path), *extra],
                                   capsys)
    assert code == 2 and stdout == ""
    assert needle in stderr and "Fix" in stderr
