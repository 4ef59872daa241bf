"""The baselines' pieces: the token loss, document boundaries, and sliding-window attention on
Llama (as Mistral), Mistral, Qwen2 and Qwen3 weights."""

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from framework.methods.causal_lm import IGNORE_INDEX, next_token_targets, token_loss_sum
from framework.models.sliding import SlidingWindowError, sliding_window_model

SMALL = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=8, max_position_embeddings=256)


def _model(family: str, **extra):
    from transformers import AutoConfig

    torch.manual_seed(0)
    cfg = AutoConfig.for_model(family, **SMALL, **extra)
    cfg._attn_implementation = "sdpa"
    return AutoModelForCausalLM.from_config(cfg).eval()


def test_token_loss_sum_equals_the_models_own_loss_in_any_piece_size():
    model = _model("qwen3")
    ids = torch.randint(0, 97, (2, 23), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    labels[0, :5] = IGNORE_INDEX
    expected = model(input_ids=ids, labels=labels).loss
    for piece in (1, 7, 64):
        total, count = token_loss_sum(model, {"input_ids": ids, "labels": labels}, piece=piece)
        assert count.item() == (labels[:, 1:] != IGNORE_INDEX).sum().item()
        torch.testing.assert_close(total / count, expected, rtol=1e-5, atol=1e-6)


def test_targets_never_cross_a_document_boundary():
    labels = torch.tensor([[10, 11, 12, 13, 14, 15]])
    docs = torch.tensor([[0, 0, 0, 1, 1, 2]])
    assert next_token_targets(labels, docs).tolist() == [[11, 12, -100, 14, -100, -100]]
    assert next_token_targets(labels).tolist() == [[11, 12, 13, 14, 15, -100]]


def test_a_batch_without_labelled_tokens_still_gives_every_parameter_a_gradient():
    model = _model("llama")
    ids = torch.randint(0, 97, (1, 8))
    total, count = token_loss_sum(model, {"input_ids": ids, "labels": torch.full_like(ids, IGNORE_INDEX)})
    total.backward()
    assert count.item() == 0 and total.item() == 0.0
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "qwen3"])
def test_sliding_window_equals_full_attention_inside_the_window_and_differs_beyond(family):
    model, window = _model(family), 8
    sliding = sliding_window_model(model, window)
    assert sliding.get_input_embeddings().weight is model.get_input_embeddings().weight  # shared, not copied
    ids = torch.randint(0, 97, (1, 40), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full, windowed = model(ids).logits, sliding(ids).logits
    torch.testing.assert_close(windowed[:, :window], full[:, :window], rtol=0, atol=1e-5)
    assert (windowed[:, window:] - full[:, window:]).abs().amax() > 1e-3
    # a token reaches (window - 1) positions further per layer, and no further
    changed = ids.clone()
    changed[0, 10] = (changed[0, 10] + 1) % 97
    with torch.no_grad():
        after = sliding(changed).logits
    reach = 10 + (window - 1) * model.config.num_hidden_layers
    torch.testing.assert_close(after[:, reach + 1:], windowed[:, reach + 1:], rtol=0, atol=1e-5)
    assert (after[:, reach] - windowed[:, reach]).abs().amax() > 1e-6


def test_a_saved_sliding_model_loads_back_with_its_window(tmp_path):
    sliding = sliding_window_model(_model("llama"), 8)
    sliding.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert loaded.config.model_type == "mistral" and loaded.config.sliding_window == 8
    ids = torch.randint(0, 97, (1, 30))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, sliding(ids).logits, rtol=0, atol=1e-5)


def test_families_without_a_sliding_window_path_are_refused_with_the_reason():
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=16, n_layer=1, n_head=2, n_positions=64))
    with pytest.raises(SlidingWindowError, match="llama/mistral/qwen2/qwen3.*'gpt2'.*Fix"):
        sliding_window_model(gpt2, 8)
    biased = LlamaForCausalLM(LlamaConfig(**SMALL, attention_bias=True))
    with pytest.raises(SlidingWindowError, match="attention_bias.*Fix: use full attention"):
        sliding_window_model(biased, 8)
    with pytest.raises(SlidingWindowError, match="window=0"):
        sliding_window_model(_model("qwen3"), 0)
