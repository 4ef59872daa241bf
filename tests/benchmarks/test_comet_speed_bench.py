"""benchmarks/comet_speed.py at tiny sizes: it runs every phase and prints the JSON it promises."""

import json
import math
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
import comet_speed  # noqa: E402


def test_tiny_run_prints_every_phase(capsys):
    assert comet_speed.main(["--tiny", "--prefill-chunks", "2", "--open-tokens", "8", "--decode-tokens", "3",
                             "--train-chunks", "2", "--threads", "1", "--profile", "--profile-rows", "4"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["machine"]) >= {"platform", "cpus", "threads", "torch", "device", "date"}
    assert result["prefill"]["tokens"] == 2 * 64 + 8 and result["prefill"]["s_per_chunk"] > 0
    decode = result["decode"]
    assert decode["tokens"] == 3 and decode["ms_per_token"] > 0 and decode["backbone_kv_cache_ms_per_token"] > 0
    # memory rows (8 global + 16 queue entries) + the open chunk's text and compression rows
    assert decode["keys_at_end"] == 8 + 16 + 13 + 1
    assert result["close"]["close_and_open_s"] > 0
    assert result["training"]["chunks"] == 2 and result["training"]["s_per_chunk"] > 0
    assert set(result["profile"]) == {"prefill", "decode", "training"}
    assert all(len(rows) == 4 and {"op", "self_cpu_ms", "calls"} <= set(rows[0]) for rows in result["profile"].values())

    # memory, from child processes: training above the model, inference above the loaded model per length
    def mb(x):
        return isinstance(x, float) and math.isfinite(x) and x >= 0

    training = result["training"]
    assert all(mb(training[k]) for k in ("rss_after_build_mb", "rss_after_warmup_mb", "peak_rss_mb",
                                         "peak_above_model_mb"))
    assert training["peak_rss_mb"] >= training["rss_after_warmup_mb"] > 0
    inference = result["inference_memory"]
    assert [r["tokens"] for r in inference["rows"]] == [256, 1024]  # the tiny preset's lengths
    assert (inference["shortest"], inference["longest"]) == (256, 1024)
    for row in inference["rows"]:
        assert all(mb(row[k]) for k in ("rss_after_load_mb", "peak_rss_mb", "peak_above_load_mb"))
        assert row["piece_tokens"] == 4 * 64 and row["peak_measure"]
    growth = inference["growth_mb"]
    assert isinstance(growth, float) and math.isfinite(growth)
    assert growth == inference["rows"][1]["peak_above_load_mb"] - inference["rows"][0]["peak_above_load_mb"]


def test_no_memory_omits_the_memory_figures_and_out_writes_the_json(capsys, tmp_path):
    out = tmp_path / "speed.json"
    assert comet_speed.main(["--tiny", "--prefill-chunks", "1", "--open-tokens", "8", "--decode-tokens", "2",
                             "--train-chunks", "1", "--threads", "1", "--no-memory", "--out", str(out)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert json.loads(out.read_text()) == result
    assert "inference_memory" not in result and "profile" not in result
    assert result["training"]["s_per_chunk"] > 0 and not any(k.endswith("_mb") for k in result["training"])


def test_sizes_that_would_close_the_chunk_while_decoding_are_refused():
    with pytest.raises(SystemExit, match="open chunk"):
        comet_speed.main(["--tiny", "--open-tokens", "60", "--decode-tokens", "8"])


def test_pairs_alternate_an_earlier_commit_and_the_working_tree(capsys, tmp_path):
    import comet_speed_pairs

    tiny = "--tiny --prefill-chunks 1 --open-tokens 4 --decode-tokens 2 --train-chunks 1 --threads 1 --no-memory"
    out = tmp_path / "pairs.json"
    result = comet_speed_pairs.main(["--before", "HEAD", "--pairs", "2", "--before-args", tiny, "--out", str(out),
                                     "--", *tiny.split()[:-1]])
    assert json.loads(out.read_text()) == json.loads(capsys.readouterr().out) == result
    assert len(result["ratios"]) == 2
    for name in ("prefill_s_per_chunk", "decode_ms_per_token", "training_s_per_chunk"):
        ratios = [pair[name] for pair in result["ratios"]]
        assert min(ratios) == result["min_ratio"][name] <= result["median_ratio"][name] <= max(ratios)
        assert all(r > 0 for r in ratios)
    # the kept pair is whole: its ratios are its own runs' figures
    pair = result["before"], result["now"]
    assert pair[0]["prefill"]["s_per_chunk"] / pair[1]["prefill"]["s_per_chunk"] in [
        r["prefill_s_per_chunk"] for r in result["ratios"]]
    assert pair[1]["sizes"]["prefill_chunks"] == 1 and "inference_memory" not in pair[1]
