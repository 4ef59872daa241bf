"""benchmarks/comet_speed.py at tiny sizes: it runs every phase and prints the JSON it promises."""

import json
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


def test_sizes_that_would_close_the_chunk_while_decoding_are_refused():
    with pytest.raises(SystemExit, match="open chunk"):
        comet_speed.main(["--tiny", "--open-tokens", "60", "--decode-tokens", "8"])
