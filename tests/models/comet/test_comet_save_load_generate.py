"""Saving, loading through the Hugging Face paths, and generation."""

import pytest
import torch
from conftest import VOCAB, tiny_base, tiny_comet
from transformers import AutoModelForCausalLM

from framework.models.comet import BackboneError, CoMeTConfig, CoMeTForCausalLM


def test_save_load_round_trip_gives_identical_logits(tmp_path, family):
    model = tiny_comet(family)
    ids = torch.randint(0, VOCAB, (1, 45))
    model.save_pretrained(tmp_path / "ckpt")
    loaded = CoMeTForCausalLM.from_pretrained(tmp_path / "ckpt").eval()
    assert loaded.comet_config == model.comet_config
    for field in ("model_type", "hidden_size", "num_hidden_layers", "vocab_size", "num_key_value_heads"):
        assert getattr(loaded.backbone.config, field) == getattr(model.backbone.config, field), field
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits, atol=0, rtol=0)
    assert (tmp_path / "ckpt" / "model.safetensors").is_file()


def test_auto_model_for_causal_lm_loads_a_saved_folder_as_comet(tmp_path):
    model = tiny_comet("llama")
    model.save_pretrained(tmp_path / "ckpt")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt").eval()
    assert isinstance(loaded, CoMeTForCausalLM)
    ids = torch.randint(0, VOCAB, (1, 20))
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits)


def test_from_base_loads_a_local_directory_with_from_pretrained(tmp_path):
    base = tiny_base("qwen2")
    base.save_pretrained(tmp_path / "base")
    model = CoMeTForCausalLM.from_base(str(tmp_path / "base"), CoMeTConfig(chunk_size=16, global_mem_size=2,
                                                                           temp_stride=4, temp_budget=8))
    for (name, a), (_, b) in zip(base.state_dict().items(), model.backbone.state_dict().items()):
        torch.testing.assert_close(a, b, msg=name)


def test_missing_checkpoint_and_bad_base_get_clear_errors(tmp_path):
    with pytest.raises(BackboneError, match="not a CoMeT checkpoint"):
        CoMeTForCausalLM.from_pretrained(tmp_path)
    with pytest.raises(BackboneError, match="without config.json"):
        CoMeTForCausalLM.from_base(str(tmp_path))
    with pytest.raises(BackboneError, match="has no `model.embed_tokens`"):
        CoMeTForCausalLM.from_base(torch.nn.Linear(2, 2))


def _greedy_by_full_forward(model, prompt, steps):
    seq = prompt
    for _ in range(steps):
        with torch.no_grad():
            nxt = model(input_ids=seq).logits[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], 1)
    return seq


@pytest.mark.parametrize("prompt_len", [1, 13, 16, 37])
def test_generate_matches_training_layout(prompt_len):
    """Decoding forces compression tokens and crosses chunk boundaries exactly as training lays them out."""
    model = tiny_comet("qwen3")
    prompt = torch.randint(0, VOCAB, (2, prompt_len))
    out = model.generate(input_ids=prompt, max_new_tokens=22, eos_token_id=None)
    assert out.shape == (2, prompt_len + 22)
    assert torch.equal(out[:, :prompt_len], prompt)
    assert torch.equal(out, _greedy_by_full_forward(model, prompt, 22))


def test_generate_stops_at_eos_and_pads():
    model = tiny_comet("llama")
    prompt = torch.randint(0, VOCAB, (1, 10))
    free = model.generate(input_ids=prompt, max_new_tokens=6, eos_token_id=None)
    eos = int(free[0, 12])
    out = model.generate(input_ids=prompt, max_new_tokens=6, eos_token_id=eos)
    assert out.shape[1] == 13 and int(out[0, -1]) == eos


def test_sampling_is_reproducible_with_a_generator():
    model = tiny_comet("mistral")
    prompt = torch.randint(0, VOCAB, (1, 20))
    runs = [model.generate(input_ids=prompt, max_new_tokens=8, do_sample=True, top_k=20, top_p=0.9,
                           temperature=0.8, eos_token_id=None, generator=torch.Generator().manual_seed(3))
            for _ in range(2)]
    assert torch.equal(runs[0], runs[1])


def test_generate_rejects_unknown_options_and_padding_in_the_middle():
    model = tiny_comet("qwen3")
    prompt = torch.randint(0, VOCAB, (2, 8))
    with pytest.raises(ValueError, match="num_beams"):
        model.generate(input_ids=prompt, num_beams=4)
    with pytest.raises(ValueError, match="unknown argument"):
        model.generate(input_ids=prompt, max_new_tokens=2, no_such_option=1)
    mask = torch.ones_like(prompt)
    mask[0, 3] = 0
    with pytest.raises(ValueError, match="padding between real tokens"):
        model.generate(input_ids=prompt, attention_mask=mask, max_new_tokens=2)


def test_stream_memory_is_bounded():
    """After many chunks the stream holds per-layer memory of fixed size and one open chunk at most."""
    model = tiny_comet("qwen3")
    stream = model.stream()
    for _ in range(12):
        stream.feed(torch.randint(0, VOCAB, (1, 16)), logits=None)
    cfg = model.config
    for mem in stream.memory:
        assert mem.memory.shape[1] == cfg.global_mem_size and mem.queue.shape[1] == cfg.temp_budget
    assert stream.open.n_text == 16 and stream.tokens_seen == 192
