"""Saving/loading through the Auto classes, the rolling decoding cache, and generate."""

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, DynamicCache, StaticCache

from framework.models.swat import SWATConfig, SWATForCausalLM, SWATModel, register_auto_classes

VOCAB = 61
WINDOW = 6


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny tensors: see tests/conftest.py


def tiny(seed=0, **overrides):
    params = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, window=WINDOW,
                  block_size=4, initializer_range=0.1)
    params.update(overrides)
    torch.manual_seed(seed)
    return SWATForCausalLM(SWATConfig(**params)).eval()


@pytest.mark.parametrize("tie", [False, True])
def test_save_load_round_trip_through_auto_classes(tmp_path, tie):
    model = tiny(tie_word_embeddings=tie, slopes="positive", normalization="softmax")
    model.save_pretrained(tmp_path)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert "model.safetensors" in files and "config.json" in files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))]
    assert isinstance(AutoConfig.from_pretrained(tmp_path), SWATConfig)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is SWATForCausalLM
    fields = lambda cfg: {k: v for k, v in cfg.to_dict().items() if k != "_name_or_path"}  # noqa: E731
    assert fields(loaded.config) == fields(model.config)
    ids = torch.randint(0, VOCAB, (2, 23))
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits, atol=0, rtol=0)
    assert type(AutoModel.from_pretrained(tmp_path)) is SWATModel


def test_registration_is_idempotent():
    register_auto_classes()
    register_auto_classes()
    assert AutoConfig.for_model("swat").__class__ is SWATConfig


@pytest.mark.parametrize("chunk", [1, 3])
def test_incremental_decoding_matches_full_forward_far_past_the_window(chunk):
    model = tiny(normalization="sigmoid", slopes="balanced")
    ids = torch.randint(0, VOCAB, (2, 8 * WINDOW + 1))
    with torch.no_grad():
        full = model(input_ids=ids, use_cache=False).logits
        cache = DynamicCache(config=model.config)
        prefill = 5
        steps = [model(input_ids=ids[:, :prefill], past_key_values=cache, use_cache=True).logits]
        for start in range(prefill, ids.shape[1], chunk):
            out = model(input_ids=ids[:, start:start + chunk], past_key_values=cache, use_cache=True)
            steps.append(out.logits)
            assert all(layer.keys.shape[-2] <= WINDOW for layer in cache.layers)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)
    assert cache.get_seq_length() == ids.shape[1]  # absolute position keeps counting past the window


def test_generate_keeps_at_most_window_entries_per_layer():
    model = tiny()
    cache = DynamicCache(config=model.config)
    out = model.generate(input_ids=torch.randint(0, VOCAB, (1, 3)), past_key_values=cache, max_new_tokens=10 * WINDOW,
                         do_sample=False, eos_token_id=None, pad_token_id=0)
    assert out.shape[1] == 3 + 10 * WINDOW
    assert len(cache.layers) == model.config.num_hidden_layers
    assert all(layer.keys.shape[-2] <= WINDOW for layer in cache.layers)


def _greedy_without_cache(model, prompt, steps):
    seq = prompt
    for _ in range(steps):
        with torch.no_grad():
            nxt = model(input_ids=seq, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], dim=1)
    return seq


@pytest.mark.parametrize("prompt_len", [1, 4, 13])
def test_generate_greedy_equals_manual_argmax_loop(prompt_len):
    model = tiny(seed=prompt_len)
    prompt = torch.randint(0, VOCAB, (2, prompt_len))
    out = model.generate(input_ids=prompt, max_new_tokens=4 * WINDOW, do_sample=False, eos_token_id=None,
                         pad_token_id=0)
    assert torch.equal(out, _greedy_without_cache(model, prompt, 4 * WINDOW))


def test_generate_sampling_is_reproducible_and_matches_no_cache():
    model = tiny(seed=1)
    prompt = torch.randint(0, VOCAB, (2, 5))
    runs = []
    for use_cache in (True, True, False):
        torch.manual_seed(7)
        runs.append(model.generate(input_ids=prompt, max_new_tokens=3 * WINDOW, do_sample=True, top_k=20,
                                   temperature=0.9, eos_token_id=None, pad_token_id=0, use_cache=use_cache))
    assert runs[0].shape == (2, 5 + 3 * WINDOW)
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0], runs[2])


@pytest.mark.parametrize("normalization", ["sigmoid", "softmax"])
def test_left_padded_batch_generates_like_single_prompts(normalization):
    model = tiny(seed=2, normalization=normalization)
    long_prompt, short_prompt = torch.randint(1, VOCAB, (1, 9)), torch.randint(1, VOCAB, (1, 4))
    pad = long_prompt.shape[1] - short_prompt.shape[1]
    batch = torch.cat([long_prompt, torch.cat([torch.zeros(1, pad, dtype=torch.long), short_prompt], 1)])
    mask = torch.ones_like(batch)
    mask[1, :pad] = 0
    kwargs = dict(max_new_tokens=3 * WINDOW, do_sample=False, eos_token_id=None, pad_token_id=0)
    out = model.generate(input_ids=batch, attention_mask=mask, **kwargs)
    assert torch.equal(out[0], model.generate(input_ids=long_prompt, **kwargs)[0])
    assert torch.equal(out[1, pad:], model.generate(input_ids=short_prompt, **kwargs)[0])


def test_unsupported_caches_and_masks_get_clear_errors():
    model = tiny()
    ids = torch.randint(0, VOCAB, (1, 5))
    with pytest.raises(TypeError, match="DynamicCache only"):
        model(input_ids=ids, past_key_values=StaticCache(config=model.config, max_cache_len=16))
    with pytest.raises(ValueError, match="2D attention_mask"):
        model(input_ids=ids, attention_mask=torch.ones(1, 1, 5, 5))
    small = DynamicCache(config=SWATConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                                           num_attention_heads=4, window=2))
    with torch.no_grad():
        model(input_ids=ids, past_key_values=small)
        with pytest.raises(ValueError, match="sliding window is smaller"):
            model(input_ids=ids[:, :1], past_key_values=small)
