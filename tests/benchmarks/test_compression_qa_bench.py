"""benchmarks/compression_qa.py in its --quick mode: the JSON's shape (every compressor and truncation at
every ratio, the claim keys, machine info), the files it writes, truncation's ceil(n/r) budget, that
every compressor starts from the same reader weights, and the MLflow parent run with a child run per
stage (a resumed run skips the stages that finished). Every run goes to a temporary MLflow store."""

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "compression_qa.py"
COMPRESSORS = {"ram", "comi", "mean_pool"}
RATIOS = {"4", "8", "16"}
CLAIMS = {"ram_beats_mean_pool_at_8x", "comi_beats_mean_pool_at_8x", "ram_beats_truncation_at_8x",
          "comi_beats_truncation_at_8x", "ram_recall_above_chance_at_8x"}


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("compression_qa_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module", autouse=True)
def _temporary_mlflow_store(tmp_path_factory):
    """The runs that name no --tracking-uri go to a temporary store, never to <cwd>/mlflow.db."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}")
        yield


@pytest.fixture(scope="module")
def quick_run(bench, tmp_path_factory):
    out = tmp_path_factory.mktemp("compression_qa")
    threads = torch.get_num_threads()
    try:
        result = bench.main(["--quick", "--out", str(out / "r.json"), "--plot", str(out / "r.png"),
                             "--save-dir", str(out / "models"), "--tracking-uri", f"sqlite:///{out / 'mlflow.db'}"])
    finally:
        torch.set_num_threads(threads)
    return result, out


def test_json_shape_and_files(quick_run):
    result, out = quick_run
    written = json.loads((out / "r.json").read_text())
    assert written == json.loads(json.dumps(result))
    assert (out / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(written["compressors"]) == COMPRESSORS
    em = written["exact_match"]
    assert set(em) == COMPRESSORS | {"truncation", "uncompressed"}
    assert 0.0 <= em["uncompressed"] <= 1.0
    n = written["args"]["eval_samples"]
    for name in COMPRESSORS | {"truncation"}:
        assert set(em[name]) == RATIOS
        for r, row in written["settings"][name].items():
            assert row["samples"] == n
            assert 0.0 <= row["exact_match"] <= 1.0 and row["exact_match"] == em[name][r]
            assert row["ratio"] > 1.0
    for r, row in written["settings"]["ram"].items():
        assert {"answer_segment_recall", "chance_kept_share", "keep_fraction"} <= set(row)
    claims = written["claims"]
    assert CLAIMS <= set(claims)
    assert all(isinstance(claims[k], bool) for k in CLAIMS)
    assert all(k + "_detail" in claims for k in CLAIMS - {"ram_recall_above_chance_at_8x"})
    recall = claims["ram_answer_segment_recall_at_8x"]
    assert recall is None or 0.0 <= recall <= 1.0
    assert "chance_kept_share" in claims["ram_answer_segment_recall_at_8x_detail"]
    for key in ("platform", "cpus", "torch", "threads", "device"):
        assert key in written["machine"]
    assert written["machine"]["threads"] == 1
    assert written["wall_seconds"] > 0
    for key in ("reader_train_seconds", "ram_train_seconds", "comi_train_seconds", "mean_pool_train_seconds",
                "eval_seconds"):
        assert key in written["timing"]
    assert 0.0 <= written["reader"]["exact_match_at_reader_seq_len"] <= 1.0


def test_truncation_budget_is_ceil_n_over_r(bench, quick_run):
    assert bench.truncation_budget(256, 8) == 32
    assert bench.truncation_budget(250, 8) == 32
    assert bench.truncation_budget(249, 16) == 16
    assert bench.truncation_budget(7, 8) == 1
    written = json.loads(json.dumps(quick_run[0]))
    lengths = written["data"]["eval_context_tokens"]
    assert len(lengths) == written["args"]["eval_samples"]
    for r, row in written["settings"]["truncation"].items():
        assert row["context_tokens_total"] == sum(lengths)
        assert row["memory_slots_total"] == sum(math.ceil(n / int(r)) for n in lengths)


def test_every_compressor_starts_from_the_reader(quick_run):
    written = json.loads(json.dumps(quick_run[0]))
    reader = written["reader"]
    assert reader["hash"] != reader["hash_at_init"]  # stage 0 trained it
    assert reader["hash_at_end"] == reader["hash"]  # stage 1 trained copies, not the reader
    for name, info in written["per_model"].items():
        assert info["decoder_hash_at_start"] == reader["hash"], name
        assert info["trainable_parameters"]["decoder"] > 0 and info["trainable_parameters"]["encoder"] > 0
    configs = {name: info["config"] for name, info in written["per_model"].items()}
    assert configs["ram"]["method"] == "ram" and configs["ram"]["segment_size"] == 16
    assert configs["comi"]["coarse"] and configs["comi"]["fine"]
    assert not configs["mean_pool"]["coarse"] and not configs["mean_pool"]["fine"]
    same = {k: v for k, v in configs["comi"].items() if k not in ("coarse", "fine")}
    assert same == {k: v for k, v in configs["mean_pool"].items() if k not in ("coarse", "fine")}


def test_saved_models_load_and_a_saved_reader_replaces_stage_0(bench, quick_run):
    from framework.models.compression.skeleton import CompressorForQA

    result, out = quick_run
    for name in COMPRESSORS:
        model = CompressorForQA.from_pretrained(out / "models" / name)
        assert model.config.method == result["per_model"][name]["method"]
    reader = CompressorForQA.from_pretrained(out / "models" / "reader")
    assert bench.state_hash(reader.decoder) == result["reader"]["hash"]
    threads = torch.get_num_threads()
    try:
        again = bench.main(["--quick", "--reader-from", str(out / "models" / "reader"), "--models", "mean_pool",
                            "--out", str(out / "again.json"), "--plot", str(out / "again.png")])
    finally:
        torch.set_num_threads(threads)
    assert again["reader"]["hash"] == result["reader"]["hash"]
    assert again["reader"]["loaded_from"] == str((out / "models" / "reader").resolve())
    assert again["per_model"]["mean_pool"]["decoder_hash_at_start"] == result["reader"]["hash"]
    assert again["exact_match"]["uncompressed"] == result["exact_match"]["uncompressed"]


def test_state_hash_sees_every_weight(bench):
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    b.load_state_dict(a.state_dict())
    assert bench.state_hash(a) == bench.state_hash(b)
    with torch.no_grad():
        b.bias[0] += 1e-6
    assert bench.state_hash(a) != bench.state_hash(b)


def test_multi_query_loss_of_one_query_is_the_answer_loss(bench):
    from data_pipelines.qa import QAFacts
    from data_pipelines.tokenizer import load_project_tokenizer
    from framework.job import tiny_qwen3
    from framework.methods.base_model import build_base_model
    from framework.models.compression.config import CompressorConfig
    from framework.models.compression.skeleton import CompressorForQA

    tok = load_project_tokenizer()
    source = QAFacts(tok, seq_len=48, num_samples=8, digits=2)
    reader = CompressorForQA(build_base_model(tiny_qwen3(hidden_size=32), vocab_size=len(tok), seed=0),
                             CompressorConfig(method="comi", encoder_layers=1, alignment="linear")).eval()
    batch = bench.tensors(bench.make_batch(source, 0, 4))
    with torch.no_grad():
        memory = reader.token_memory(batch["context_ids"], batch["context_mask"]).memory
        total, count = reader.answer_loss(memory, batch["question_ids"], batch["question_mask"], batch["answer_ids"],
                                          batch["answer_mask"])
        direct = total / count
        one = bench.multi_query_loss(reader, batch, source, range(4), 1)
        three = bench.multi_query_loss(reader, batch, source, range(4), 3)
    torch.testing.assert_close(one, direct, atol=1e-5, rtol=1e-5)
    assert torch.isfinite(three) and not torch.allclose(three, one)


def test_ratio_curriculum_keeps_the_memory_size_and_trains_each_phase(bench, tmp_path):
    threads = torch.get_num_threads()
    try:
        result = bench.main(["--quick", "--ratio-curriculum", "1,2", "--models", "comi",
                             "--out", str(tmp_path / "r.json"), "--plot", str(tmp_path / "r.png")])
    finally:
        torch.set_num_threads(threads)
    seq_len, ratio = result["args"]["seq_len"], result["args"]["ratio"]
    phases = result["per_model"]["comi"]["ratio_phases"]
    assert [p["ratio"] for p in phases] == [1, 2, ratio]
    assert [p["steps"] for p in phases] == [result["args"]["steps"] // 3] * 3  # --quick: 3 steps
    for p in phases:
        assert p["context_tokens"] == seq_len * p["ratio"] // ratio
        assert result["data"][f"compressor_train_{p['ratio']}"]["seq_len"] == p["context_tokens"]
    # COMI's memory has ceil(n / r) slots, so the achieved ratio is r up to the last group's rounding
    assert phases[0]["achieved_ratio_mean"] == 1.0
    assert 1.5 < phases[1]["achieved_ratio_mean"] <= 2.0
    assert ratio / 2 < phases[2]["achieved_ratio_mean"] <= ratio


def test_ratio_curriculum_must_stay_below_the_ratio(bench):
    with pytest.raises(SystemExit):
        bench.parse_args(["--ratio-curriculum", "1,8"])


def test_compressors_from_a_save_dir_score_as_when_trained(bench, quick_run, tmp_path):
    result, out = quick_run
    threads = torch.get_num_threads()
    try:
        again = bench.main(["--quick", "--reader-from", str(out / "models" / "reader"), "--compressors-from",
                            str(out / "models"), "--models", "comi", "ram",
                            "--out", str(tmp_path / "r.json"), "--plot", str(tmp_path / "r.png")])
    finally:
        torch.set_num_threads(threads)
    for name in ("comi", "ram"):
        assert again["exact_match"][name] == result["exact_match"][name]
        loaded = again["per_model"][name]
        assert loaded["loaded_from"] == str((out / "models" / name).resolve())
        assert loaded["decoder_hash_at_start"] == result["per_model"][name]["decoder_hash_at_start"]
        assert loaded["train_args"]["steps"] == result["args"]["steps"]
    detail = "comi_beats_truncation_at_8x_detail"
    assert again["claims"][detail] == result["claims"][detail]


def test_autoencode_stage_trains_comi_family_only(bench, tmp_path):
    threads = torch.get_num_threads()
    try:
        result = bench.main(["--quick", "--autoencode-steps", "2", "--models", "comi", "ram",
                             "--out", str(tmp_path / "r.json"), "--plot", str(tmp_path / "r.png")])
    finally:
        torch.set_num_threads(threads)
    ae = result["per_model"]["comi"]["autoencode"]
    assert len(ae["training"]["curve"]) == 2 and math.isfinite(ae["training"]["first_loss"])
    # the reconstruction loss is over context tokens: a random decoder is far above the answer loss's scale
    assert ae["training"]["first_loss"] > 1.0
    assert "autoencode" not in result["per_model"]["ram"]


def _runs(uri: str):
    """(the parent runs, {parent id: [its child runs]}) of the study's experiment in store `uri`."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("longctx").experiment_id
    parents = client.search_runs([experiment], filter_string="tags.`longctx.stages` = '1'")
    children = {p.info.run_id: client.search_runs([experiment],
                                                  filter_string=f"tags.`mlflow.parentRunId` = '{p.info.run_id}'")
                for p in parents}
    return parents, children


def test_the_run_is_a_parent_mlflow_run_with_a_child_run_per_stage(quick_run):
    result, out = quick_run
    parents, children = _runs(f"sqlite:///{out / 'mlflow.db'}")
    assert len(parents) == 1
    parent = parents[0]
    pid = parent.info.run_id
    assert parent.info.run_name == "compression_qa" and parent.info.status == "FINISHED"
    assert parent.data.params["steps"] == str(result["args"]["steps"])
    stages = ["reader", "ram", "comi", "mean_pool", "evaluation"]
    assert sorted(c.data.tags["longctx.stage"] for c in children[pid]) == sorted(f"{pid}/{s}" for s in stages)
    assert {c.info.status for c in children[pid]} == {"FINISHED"}
    reader = json.loads(parent.data.tags["longctx.stage.reader.result"])
    assert reader["dir"] == str((out / "models" / "reader").resolve()) and reader["hash"] == result["reader"]["hash"]
    ram = json.loads(parent.data.tags["longctx.stage.ram.result"])
    assert ram["dir"] == str((out / "models" / "ram").resolve())
    assert ram["info"]["training"] == result["per_model"]["ram"]["training"]
    assert "longctx.stage.evaluation.result" in parent.data.tags


def test_resume_skips_the_stages_that_finished(bench, tmp_path, monkeypatch):
    from framework.studies import compression_qa, compression_qa_training

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    argv = ["--quick", "--models", "mean_pool", "--save-dir", str(tmp_path / "models"), "--tracking-uri", uri,
            "--out", str(tmp_path / "r.json"), "--plot", str(tmp_path / "r.png")]

    def broken(*args, **kwargs):
        raise RuntimeError("stage broke")

    threads = torch.get_num_threads()
    try:
        with monkeypatch.context() as mp:  # the evaluation fails: the reader and mean_pool stages finished
            mp.setattr(compression_qa, "evaluate", broken)
            with pytest.raises(RuntimeError, match="stage broke"):
                bench.main(argv)
        (parent,), children = _runs(uri)
        assert parent.info.status == "FAILED"
        assert {c.data.tags["longctx.stage"].split("/")[1]: c.info.status for c in children[parent.info.run_id]} == {
            "reader": "FINISHED", "mean_pool": "FINISHED", "evaluation": "FAILED"}
        with monkeypatch.context() as mp:  # resumed: no training at all, only the evaluation runs
            mp.setattr(compression_qa_training, "fit", broken)
            resumed = bench.main(argv + ["--resume", "auto"])
            (again,), children = _runs(uri)
            assert again.info.run_id == parent.info.run_id and again.info.status == "FINISHED"
            assert sorted(c.data.tags["longctx.stage"].split("/")[1] for c in children[parent.info.run_id]) == [
                "evaluation", "evaluation", "mean_pool", "reader"]
            mp.setattr(compression_qa, "evaluate", broken)  # a finished run: every stage's record is reused
            finished = bench.main(argv + ["--resume", f"runs:/{parent.info.run_id}"])
            # other settings would reuse stages trained with the logged ones: refused before any stage runs
            with pytest.raises(SystemExit, match=r"error: --resume auto: .*lr \(logged '0.001', now '0.01'\).*Fix"):
                bench.main(argv + ["--resume", "auto", "--lr", "0.01"])
            bench.main(argv + ["--resume", "auto", "--threads", "2"])  # how fast it runs may change
    finally:
        torch.set_num_threads(threads)
    from framework.models.compression.skeleton import CompressorForQA

    reader = CompressorForQA.from_pretrained(tmp_path / "models" / "reader")
    assert resumed["reader"]["hash"] == bench.state_hash(reader.decoder) == resumed["reader"]["hash_at_end"]
    assert resumed["per_model"]["mean_pool"]["decoder_hash_at_start"] == resumed["reader"]["hash"]
    assert resumed["per_model"]["mean_pool"]["training"]["curve"]
    for key in ("exact_match", "settings", "claims", "examples", "per_model"):
        assert finished[key] == resumed[key], key
    assert finished["reader"] == resumed["reader"]


def test_resume_needs_a_save_dir(bench):
    with pytest.raises(SystemExit):
        bench.parse_args(["--quick", "--resume", "auto"])
