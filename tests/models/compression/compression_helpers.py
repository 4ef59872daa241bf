"""Tiny Hugging Face bases and QA batches for the compression tests."""

import torch
from transformers import AutoConfig, AutoModelForCausalLM


FAMILIES = {
    "llama": {}, "mistral": {"sliding_window": None}, "qwen2": {},
    "qwen3": {"head_dim": 16},
}


def tiny_base(family="qwen3", vocab=256, layers=2, seed=0):
    cfg = AutoConfig.for_model(family, vocab_size=vocab, hidden_size=64, intermediate_size=128,
                               num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                               max_position_embeddings=1024, **FAMILIES[family])
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(cfg).eval()


def batch(b=3, c=64, q=10, a=5, vocab=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    ctx = torch.randint(5, vocab, (b, c), generator=g)
    cm = torch.ones(b, c, dtype=torch.bool)
    if b > 1:
        cm[1, 45:] = False
    qs = torch.randint(5, vocab, (b, q), generator=g)
    qm = torch.ones(b, q, dtype=torch.bool)
    if b > 2:
        qm[2, 7:] = False
    ans = torch.randint(5, vocab, (b, a), generator=g)
    am = torch.ones(b, a, dtype=torch.bool)
    am[0, 3:] = False
    ev = torch.zeros(b, c, dtype=torch.bool)
    ev[:, 18:22] = True
    return dict(context_ids=ctx, context_mask=cm, question_ids=qs, question_mask=qm, answer_ids=ans,
                answer_mask=am, evidence_mask=ev)
