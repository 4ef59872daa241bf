"""longctx bench efficiency: the sliding-window baseline is a real window; the JSON, plots and skips."""

import json

import pytest
import torch

torch.set_num_threads(1)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def longctx(argv):
    from framework import cli

    return cli.main(argv)


@pytest.fixture(scope="module")
def tiny():
    from framework.eval.efficiency import build_tiny_model

    model, tokenizer = build_tiny_model(seed=2)
    return model, tokenizer


def test_sliding_window_equals_full_inside_window_and_differs_beyond(tiny):
    from framework.eval.efficiency import HFRunner
    from framework.models.sliding import sliding_window_model

    backbone, window = tiny[0].backbone, 16
    sliding = sliding_window_model(backbone, window)
    assert sliding.model.embed_tokens.weight is backbone.model.embed_tokens.weight  # shared, not copied
    ids = torch.randint(0, 8000, (1, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full_logits, sliding_logits = backbone(ids).logits, sliding(ids).logits
    torch.testing.assert_close(sliding_logits[:, :window], full_logits[:, :window], rtol=0, atol=1e-5)
    assert (sliding_logits[:, window:] - full_logits[:, window:]).abs().amax() > 1e-2

    # decoding on the sliding KV cache gives the sliding forward's logits, and the cache stays window-1 long
    runner = HFRunner(sliding)
    with torch.no_grad():
        runner.prefill(ids[:, :30])
        steps = [sliding(input_ids=ids[:, t:t + 1], past_key_values=runner.cache, use_cache=True).logits
                 for t in range(30, 48)]
    torch.testing.assert_close(torch.cat(steps, 1), sliding_logits[:, 30:], rtol=0, atol=1e-5)
    assert runner.cache.layers[0].keys.shape[-2] == window - 1


def test_blocked_sliding_prefill_gives_the_one_pass_prefill_and_keeps_only_the_window(tiny):
    from framework.eval.efficiency import HFRunner
    from framework.models.sliding import sliding_window_model

    window = 16
    sliding = sliding_window_model(tiny[0].backbone, window)
    ids = torch.randint(0, 8000, (1, 75), generator=torch.Generator().manual_seed(1))  # not a multiple of 16
    one_pass, blocked = HFRunner(sliding), HFRunner(sliding, block=window)
    with torch.no_grad():
        reference = sliding(ids).logits[:, -1]
        tokens = [one_pass.prefill(ids), blocked.prefill(ids)]
        assert blocked.cache.get_seq_length() == 75 and blocked.cache.layers[0].keys.shape[-2] == window - 1
        decoded = [runner.step(token) for runner, token in zip((one_pass, blocked), tokens)]
        after = sliding(torch.cat([ids, tokens[0][:, None]], 1)).logits[:, -1]
    assert tokens[0] == tokens[1] == reference.argmax(-1)
    assert decoded[0] == decoded[1] == after.argmax(-1)


def test_bench_tiny_json_and_plots(tmp_path, capsys):
    out = tmp_path / "bench"
    code = longctx(["bench", "efficiency", "--tiny", "--lengths", "96,32", "--decode-tokens", "3", "--window", "48",
                    "--out", str(out)])
    stdout = capsys.readouterr().out
    assert code == 0
    summary = json.loads(stdout)
    assert summary["device"] == "cpu" or summary["device"].startswith("cuda")
    assert summary["base"].startswith("qwen3") and summary["window"] == 48
    assert summary["memory_metric"] in ("peak_rss_delta_mb", "peak_cuda_allocated_above_start_mb")
    assert [(r["method"], r["length"]) for r in summary["results"]] == [
        (m, n) for n in (32, 96) for m in ("comet", "full", "sliding")]
    for row in summary["results"]:
        assert "skipped" not in row
        assert row["prefill_s"] > 0 and row["decode_ms_per_token"] > 0
        assert row["peak_mem_mb"] is None or row["peak_mem_mb"] >= 0
    assert json.loads((out / "efficiency.json").read_text())["results"] == summary["results"]
    for name in ("prefill", "decode", "memory"):
        assert (out / f"efficiency_{name}.png").read_bytes()[:8] == PNG_MAGIC


def test_bench_skips_full_attention_past_max_positions(tiny, tmp_path, capsys):
    model, tokenizer = tiny
    model_dir = tmp_path / "model"
    model.save_pretrained(str(model_dir), tokenizer=tokenizer)
    code = longctx(["bench", "efficiency", "--model", str(model_dir), "--methods", "full", "--lengths", "4095",
                    "--decode-tokens", "2", "--out", str(tmp_path / "o")])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0
    (row,) = summary["results"]
    assert row["method"] == "full" and row["length"] == 4095
    assert "max_position_embeddings=4096" in row["skipped"] and "prefill_s" not in row


@pytest.mark.parametrize("extra, needle", [
    (["--lengths", "1k,2k"], "--lengths '1k,2k'"),
    (["--lengths", "0"], "--lengths '0'"),
    (["--methods", "comet,flash"], "--methods 'comet,flash'"),
    (["--decode-tokens", "0"], "--decode-tokens 0"),
])
def test_bad_input_exits_2_with_cause_and_fix(tmp_path, capsys, extra, needle):
    code = longctx(["bench", "efficiency", "--tiny", "--out", str(tmp_path), *extra])
    captured = capsys.readouterr()
    assert code == 2
    assert needle in captured.err and "Fix" in captured.err
    assert captured.out == ""
