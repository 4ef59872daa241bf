"""Helpers of the merging tests: tiny real Hugging Face models (a random two-layer Llama base saved with the
project tokenizer, and fine-tunes of it: a few optimiser steps on short texts), saved to folders."""

from __future__ import annotations

from pathlib import Path

CALIBRATION = ["the quick brown fox jumps over the lazy dog", "memory tokens compress the long text",
               "the passkey is 41907, remember it", "hello world, the garden was green and quiet"]


def tiny_config(vocab_size: int, **overrides):
    from transformers import LlamaConfig

    kw = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=False)
    kw.update(overrides)
    return LlamaConfig(**kw)


def save(model, tok, directory) -> str:
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return str(directory)


def fine_tune(base_dir: str, texts: list[str], out_dir, steps: int = 8, lr: float = 3e-3, seed: int = 0) -> str:
    """A few Adam steps of next-token loss on `texts`, from the base; saved with the tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir).train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    batches = [tok(t, return_tensors="pt")["input_ids"] for t in texts]
    for step in range(steps):
        ids = batches[step % len(batches)]
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return save(model.eval(), tok, out_dir)


def state_dict(directory) -> dict:
    from safetensors.torch import load_file

    return load_file(str(Path(directory) / "model.safetensors"))
