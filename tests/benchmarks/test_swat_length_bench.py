"""benchmarks/swat_length.py in its --quick mode: the JSON's shape (four models, four multiples, the
claim keys), the files it writes, and that the longer models see the same tokens as vanilla."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "swat_length.py"
MODELS = {"swat", "vanilla", "sigmoid_no_bias", "sliding_softmax"}
MULTIPLES = {"1", "4", "16", "64"}
CLAIMS = {"swat_flat", "vanilla_rises", "swat_beats_sigmoid_no_bias", "swat_beats_sliding_softmax",
          "swat_beats_vanilla_beyond_vanilla_training_length"}


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("swat_length_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def quick_run(bench, tmp_path_factory):
    out = tmp_path_factory.mktemp("swat_length")
    threads = torch.get_num_threads()
    try:
        result = bench.main(["--quick", "--out", str(out / "r.json"), "--plot", str(out / "r.png")])
    finally:
        torch.set_num_threads(threads)
    return result, out


def test_json_shape_and_files(quick_run):
    result, out = quick_run
    written = json.loads((out / "r.json").read_text())
    assert written == json.loads(json.dumps(result))
    assert (out / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(written["models"]) == MODELS
    assert set(written["loss_by_multiple"]) == MODELS
    w = written["args"]["window"]
    for name, row in written["loss_by_multiple"].items():
        assert set(row) == MULTIPLES
        assert all(v > 0 for v in row.values())
        train_len = written["per_model"][name]["train_length"]
        assert train_len == (w if name == "vanilla" else 4 * w)
        for m, v in row.items():  # the per-model table is a view of the common table
            assert written["loss_by_length"][name][str(int(m) * train_len)] == v
    assert set(written["loss_by_length"]["swat"]) == {str(f * w) for f in (1, 4, 16, 64, 256)}
    claims = written["claims"]
    assert CLAIMS <= set(claims)
    assert all(isinstance(claims[k], bool) for k in CLAIMS)
    assert set(claims["swat_flat_detail"]["relative_change_vs_1x"]) == {"4x", "16x", "64x"}
    for key in ("cpus", "torch", "device", "threads"):
        assert key in written["machine"]
    assert written["wall_seconds"] > 0
    scored = written["data"]["scored_tokens"]["swat"]
    assert max(scored.values()) - min(scored.values()) <= written["data"]["validation_span_tokens"] // w


def test_vanilla_sees_the_same_tokens_in_the_same_order(bench):
    class Windows:
        def __getitem__(self, i):
            ids = torch.arange(16) + 100 * i
            return {"input_ids": ids, "labels": ids.clone(), "document_ids": torch.zeros(16, dtype=torch.long)}

    long = bench.make_batch(Windows(), [3, 1], split=1)
    short = bench.make_batch(Windows(), [3, 1], split=4)
    assert short["input_ids"].shape == (8, 4)
    assert torch.equal(short["input_ids"].reshape(-1), long["input_ids"].reshape(-1))
