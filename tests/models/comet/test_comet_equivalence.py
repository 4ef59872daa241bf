"""CoMeT's forward: prefix K/V equals placeholder rows, the schedules agree, gradients cross chunks."""

import pytest
import torch
from conftest import VOCAB, tiny_base, tiny_comet

from framework.models.comet import CoMeTConfig, CoMeTForCausalLM


def placeholder_rows_forward(model, ids):
    """The reference formulation: memory written into placeholder rows in front of each chunk.

    Every row, memory included, runs through the unmodified decoder layer under a plain causal
    mask over the chunk, with positions 0..R-1; the memory rows are overwritten at every layer.
    """
    cfg, base = model.config, model.backbone
    batch, n = ids.shape
    dim = base.config.hidden_size
    chunks = [ids[:, i:i + cfg.chunk_size] for i in range(0, n, cfg.chunk_size)]
    xs, kinds = [], []
    for chunk in chunks:
        emb, rows, kind = base.model.embed_tokens(chunk), [], []
        for i in range(chunk.shape[1]):
            rows.append(emb[:, i]), kind.append("text")
            if (i + 1) % cfg.temp_stride == 0 or i == chunk.shape[1] - 1:
                rows.append(model.compress_embed.expand(batch, dim)), kind.append("comp")
        for j in range(cfg.global_mem_size):
            rows.append(model.readout_embed[j].expand(batch, dim)), kind.append("readout")
        xs.append(torch.stack(rows, 1)), kinds.append(kind)
    for layer_idx, layer in enumerate(base.model.layers):
        nets, memory, state, queue = model.memory_nets[layer_idx], None, None, None
        for t in range(len(chunks)):
            mem = [m for m in (memory, queue) if m is not None]
            h = torch.cat(mem + [xs[t]], 1)
            n_mem, rows = h.shape[1] - xs[t].shape[1], h.shape[1]
            pos = torch.arange(rows)[None].expand(batch, rows)
            mask = torch.full((rows, rows), torch.finfo(h.dtype).min).triu(1)[None, None]
            out = layer(h, attention_mask=mask, position_ids=pos, position_embeddings=base.model.rotary_emb(h, pos))
            y = (out[0] if isinstance(out, tuple) else out)[:, n_mem:]
            xs[t] = y
            readouts = [k for k, v in enumerate(kinds[t]) if v == "readout"]
            comps = [k for k, v in enumerate(kinds[t]) if v == "comp"]
            memory, state = nets.global_mem.update(y[:, readouts], state)
            entries = nets.temp_mem.entries(y[:, comps])
            queue = (entries if queue is None else torch.cat([queue, entries], 1))[:, -cfg.temp_budget:]
    texts = [[k for k, v in enumerate(kind) if v == "text"] for kind in kinds]
    return torch.cat([base.lm_head(base.model.norm(x[:, idx])) for x, idx in zip(xs, texts)], 1)


def test_prefix_kv_equals_placeholder_rows(family):
    model = tiny_comet(family, neutral_start=False)  # the reference formulation
    ids = torch.randint(0, VOCAB, (2, 70))
    with torch.no_grad():
        ours = model(input_ids=ids).logits
        ref = placeholder_rows_forward(model, ids)
    assert ours.shape == (2, 70, VOCAB)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("neutral_start", [True, False])
def test_eager_attention_matches_sdpa(neutral_start):
    ids = torch.randint(0, VOCAB, (1, 50))
    cfg = CoMeTConfig(chunk_size=16, global_mem_size=4, temp_stride=4, temp_budget=8, neutral_start=neutral_start)
    sdpa = CoMeTForCausalLM.from_base(tiny_base("llama", attn="sdpa"), cfg).eval()
    eager = CoMeTForCausalLM.from_base(tiny_base("llama", attn="eager"), CoMeTConfig(**cfg.to_dict())).eval()
    with torch.no_grad():  # memory that is read (a nonzero read gate), so both attention passes matter
        for p in sdpa.memory_parameters():
            p.add_(torch.randn_like(p) * 0.05)
    eager.load_state_dict(sdpa.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(eager(input_ids=ids).logits, sdpa(input_ids=ids).logits, atol=1e-5, rtol=1e-5)


def test_one_chunk_without_memory_equals_base(family):
    base = tiny_base(family)
    model = CoMeTForCausalLM.from_base(base, CoMeTConfig(chunk_size=64, global_mem_size=4, temp_stride=-1, temp_budget=0))
    ids = torch.randint(0, VOCAB, (2, 40))
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, base(input_ids=ids).logits, atol=1e-5, rtol=1e-5)


def test_memory_changes_later_chunks():
    model = tiny_comet("qwen3")
    ids = torch.randint(0, VOCAB, (1, 48))
    other = ids.clone()
    other[:, :16] = torch.randint(0, VOCAB, (1, 16))
    with torch.no_grad():
        a, b = model(input_ids=ids).logits, model(input_ids=other).logits
    assert not torch.allclose(a[:, 16:], b[:, 16:], atol=1e-4), "the first chunk must reach later chunks"


def test_layer_major_equals_chunk_major_and_streaming(family):
    model = tiny_comet(family)
    ids = torch.randint(0, VOCAB, (2, 61))
    with torch.no_grad():
        layer_major = model(input_ids=ids).logits
        chunk_major = model(input_ids=ids, schedule="chunk_major").logits
        streamed = model.stream().feed(ids, logits="all")
        stream = model.stream()
        pieces = [stream.feed(ids[:, i:i + k], logits="all") for i, k in ((0, 5), (5, 1), (6, 27), (33, 1), (34, 27))]
    torch.testing.assert_close(chunk_major, layer_major, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(streamed, layer_major, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat(pieces, 1), layer_major, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("paths", [dict(global_mem_size=4, temp_stride=-1, temp_budget=0),
                                   dict(global_mem_size=0, temp_stride=4, temp_budget=8),
                                   dict()])
def test_last_chunk_loss_reaches_first_chunk_embeddings(paths):
    model = tiny_comet("qwen3", **paths).train()
    ids = torch.randint(0, VOCAB, (1, 48))
    labels = ids.clone()
    labels[:, :32] = -100  # loss only on the last of three chunks
    embeds = model.backbone.model.embed_tokens(ids).detach().requires_grad_(True)
    model(inputs_embeds=embeds, labels=labels).loss.backward()
    first = embeds.grad[:, :16].abs().sum()
    assert first > 0, "no gradient reached the first chunk through memory"


def test_activation_checkpointing_gives_same_gradients():
    ids = torch.randint(0, VOCAB, (1, 40))
    grads = []
    for ckpt in (False, True):
        model = tiny_comet("llama", gradient_checkpointing=ckpt).train()
        out = model(input_ids=ids, labels=ids, return_logits=False)
        out.loss.backward()
        grads.append([p.grad.clone() for p in model.parameters()])
        assert out.logits is None
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_loss_is_mean_over_text_tokens_with_shifted_labels():
    model = tiny_comet("qwen3")
    ids = torch.randint(0, VOCAB, (2, 37))
    with torch.no_grad():
        out = model(input_ids=ids, labels=ids)
    expected = torch.nn.functional.cross_entropy(out.logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    torch.testing.assert_close(out.loss, expected)
    assert int(out.num_tokens) == 2 * 36


def test_right_padding_does_not_change_real_positions():
    model = tiny_comet("qwen3")
    long, short = torch.randint(0, VOCAB, (1, 40)), torch.randint(0, VOCAB, (1, 29))
    batch = torch.cat([long, torch.cat([short, torch.zeros(1, 11, dtype=torch.long)], 1)])
    mask = torch.ones_like(batch)
    mask[1, 29:] = 0
    with torch.no_grad():
        together = model(input_ids=batch, attention_mask=mask).logits
        alone = model(input_ids=short).logits
    torch.testing.assert_close(together[1:, :29], alone, atol=1e-5, rtol=1e-5)


def test_document_reset_isolates_packed_documents():
    model = tiny_comet("qwen3", reset_memory_at_doc_boundaries=True)
    doc_a, doc_b = torch.randint(0, VOCAB, (1, 21)), torch.randint(0, VOCAB, (1, 30))
    other_a = torch.randint(0, VOCAB, (1, 21))
    docs = torch.cat([torch.zeros(1, 21), torch.ones(1, 30)], 1).long()
    with torch.no_grad():
        first = model(input_ids=torch.cat([doc_a, doc_b], 1), document_ids=docs).logits[:, 21:]
        second = model(input_ids=torch.cat([other_a, doc_b], 1), document_ids=docs).logits[:, 21:]
        no_reset = tiny_comet("qwen3")
        leak_1 = no_reset(input_ids=torch.cat([doc_a, doc_b], 1)).logits[:, 21:]
        leak_2 = no_reset(input_ids=torch.cat([other_a, doc_b], 1)).logits[:, 21:]
    torch.testing.assert_close(first, second, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(leak_1, leak_2, atol=1e-4)
