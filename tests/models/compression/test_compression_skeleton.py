"""The encoder-decoder skeleton over real Hugging Face families: what the memory holds, save/load,
the Hugging Face loading path of the decoder, and cached greedy decoding."""

import math

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

import data_pipelines.qa
from data_pipelines.tokenizer import load_project_tokenizer
from framework.models.compression import ram
from framework.models.compression.config import CompressorConfig, CompressorConfigError
from framework.models.compression.prompts import QUESTION_TEMPLATE
from framework.models.compression.skeleton import CompressorError, CompressorForQA

from compression_helpers import FAMILIES, batch, tiny_base


def test_question_template_matches_the_training_data():
    assert QUESTION_TEMPLATE == data_pipelines.qa.QUESTION_TEMPLATE


def test_encoder_starts_as_the_backbones_first_layers():
    base = tiny_base(layers=3)
    model = CompressorForQA(base, CompressorConfig(method="comi", encoder_layers=2))
    assert len(model.encoder.layers) == 2
    enc, dec = model.encoder.state_dict(), base.base_model.state_dict()
    for key, value in enc.items():
        assert torch.equal(value, dec[key]), key
    assert model.encoder.embed_tokens.weight.data_ptr() != base.get_input_embeddings().weight.data_ptr()
    with pytest.raises(CompressorError, match="encoder_layers=4 exceeds"):
        CompressorForQA(tiny_base(layers=3), CompressorConfig(encoder_layers=4))


def test_ram_memory_is_kept_tokens_and_one_vector_per_skimmed_segment():
    model = CompressorForQA(tiny_base(), CompressorConfig(method="ram", encoder_layers=1, segment_size=8,
                                                          keep_fraction=0.25))
    data = batch()
    comp = model.compress(**{k: v for k, v in data.items() if k.startswith(("context", "question", "evidence"))})
    for b, mem in enumerate(comp.memory):
        n = int(data["context_mask"][b].sum())
        bounds = ram.segment_bounds(n, 8)
        kept = comp.kept[b]
        assert len(kept) == math.floor(0.25 * len(bounds)) and kept == sorted(kept)
        assert mem.shape[0] == sum(e - s for i, (s, e) in enumerate(bounds) if i in kept) + len(bounds) - len(kept)
        # a kept segment contributes the decoder's embeddings of its tokens, in place
        row, ids = 0, data["context_ids"][b][:n]
        for i, (s, e) in enumerate(bounds):
            if i in kept:
                assert torch.allclose(mem[row:row + e - s], model.decoder_embed(ids[s:e]))
                row += e - s
            else:
                row += 1
        assert comp.positives[b] == [i for i, (s, e) in enumerate(bounds) if s < 22 and e > 18]
    assert comp.aux_loss.item() > 0
    assert comp.ratio == pytest.approx(sum(comp.context_tokens) / sum(comp.memory_slots))


def test_ram_batched_skim_equals_the_per_segment_formula():
    model = CompressorForQA(tiny_base(), CompressorConfig(method="ram", encoder_layers=1, segment_size=8,
                                                          keep_fraction=0.0, alignment="linear"))
    data = batch(b=1)
    with torch.no_grad():
        comp = model.compress(data["context_ids"], data["context_mask"], data["question_ids"], data["question_mask"])
        rows = [data["question_ids"][0][data["question_mask"][0]]]
        rows += [data["context_ids"][0][s:e] for s, e in ram.segment_bounds(64, 8)]
        hidden, mask = model._encode(rows)
        q = ram.masked_mean(hidden, mask)[0]
        expected = torch.stack([ram.skim_vector(hidden[i], mask[i], q) for i in range(1, len(rows))])
    assert torch.allclose(comp.memory[0], model.align(expected[None])[0], atol=1e-6)


def test_comi_memory_has_one_slot_per_group_and_chunks_compress_independently():
    cfg = CompressorConfig(method="comi", encoder_layers=1, ratio=8, chunk_tokens=32)
    model = CompressorForQA(tiny_base(), cfg)
    data = batch()
    with torch.no_grad():
        comp = model.compress(data["context_ids"], data["context_mask"], data["question_ids"], data["question_mask"])
        assert comp.memory_slots[0] <= 2 * math.ceil(32 / 8) and comp.context_tokens == [64, 45, 64]
        # the first chunk's memory equals compressing that chunk alone
        first = model.compress(data["context_ids"][:1, :32], data["context_mask"][:1, :32], data["question_ids"][:1],
                               data["question_mask"][:1])
    assert torch.allclose(comp.memory[0][:first.memory_slots[0]], first.memory[0], atol=1e-5)
    with torch.no_grad():
        coarse = model.compress(data["context_ids"], data["context_mask"], data["question_ids"], data["question_mask"],
                                ratio=16)
    assert coarse.ratio > comp.ratio


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("method,alignment,lora", [("ram", "linear", 0), ("comi", "block", 4)])
def test_save_load_round_trip_and_hf_loading_of_the_decoder(tmp_path, family, method, alignment, lora):
    model = CompressorForQA(tiny_base(family), CompressorConfig(method=method, encoder_layers=1, alignment=alignment,
                                                                lora_rank=lora, segment_size=8, ratio=4))
    if lora:  # a trained adapter must survive the save (folded into the decoder weights)
        with torch.no_grad():
            for p in model.lora_parameters():
                p.normal_(0, 0.05)
    model.eval()
    data = batch()
    with torch.no_grad():
        before = model(**data)
    model.save_pretrained(tmp_path, tokenizer=None)
    loaded = CompressorForQA.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        after = loaded(**data)
    assert torch.allclose(before.loss_sum, after.loss_sum, atol=1e-4)
    assert loaded.config == model.config
    plain = AutoModelForCausalLM.from_pretrained(tmp_path)  # the decoder is a plain HF checkpoint
    assert plain.config.model_type == family
    assert not any(p.suffix in (".bin", ".pt", ".pkl") for p in tmp_path.iterdir())


def test_cached_greedy_answer_equals_recomputing_the_whole_sequence():
    model = CompressorForQA(tiny_base(), CompressorConfig(method="comi", encoder_layers=1, ratio=4)).eval()
    data = batch()
    with torch.no_grad():
        answers, comp = model.generate(data["context_ids"], data["context_mask"], data["question_ids"],
                                       data["question_mask"], max_new_tokens=6)
        for b, mem in enumerate(comp.memory):
            q = data["question_ids"][b][data["question_mask"][b]]
            seq = torch.cat([mem, model.decoder_embed(q)])
            tokens = []
            for _ in range(6):
                logits = model.decoder(inputs_embeds=seq[None]).logits[0, -1]
                tokens.append(int(logits.argmax()))
                seq = torch.cat([seq, model.decoder_embed(torch.tensor([tokens[-1]]))])
            assert answers[b] == tokens


def test_merge_alpha_changes_the_memory_and_survives_a_save(tmp_path):
    base = tiny_base()
    plain = CompressorForQA(base, CompressorConfig(method="comi", encoder_layers=1, ratio=4)).eval()
    sharp = CompressorForQA(base, CompressorConfig(method="comi", encoder_layers=1, ratio=4, merge_alpha=20.0)).eval()
    sharp.encoder.load_state_dict(plain.encoder.state_dict())
    sharp.align.load_state_dict(plain.align.state_dict())
    data = batch()
    args = (data["context_ids"], data["context_mask"], data["question_ids"], data["question_mask"])
    with torch.no_grad():
        a, b = plain.compress(*args), sharp.compress(*args)
        assert [m.shape for m in a.memory] == [m.shape for m in b.memory]  # the coarse step is unchanged
        assert not torch.allclose(a.memory[0], b.memory[0])
        sharp.save_pretrained(tmp_path)
        loaded = CompressorForQA.from_pretrained(tmp_path).eval()
        assert loaded.config.merge_alpha == 20.0
        assert torch.allclose(loaded.compress(*args).memory[0], b.memory[0], atol=1e-5)


def test_answer_loss_counts_only_answer_tokens():
    model = CompressorForQA(tiny_base(), CompressorConfig(method="comi", encoder_layers=1, ratio=4))
    out = model(**batch())
    assert int(out.num_tokens) == 3 + 5 + 5
    assert out.aux_loss.item() == 0.0  # COMI has no auxiliary loss


def test_bad_settings_name_the_field():
    with pytest.raises(CompressorConfigError, match="compression.method='rmt'"):
        CompressorConfig(method="rmt")
    with pytest.raises(CompressorConfigError, match="keep_fraction"):
        CompressorConfig(keep_fraction=1.5)
    with pytest.raises(CompressorConfigError, match="merge_alpha=-1.0"):
        CompressorConfig(merge_alpha=-1.0)
    with pytest.raises(CompressorError, match="not a compressor checkpoint"):
        CompressorForQA.from_pretrained("/nonexistent")


def test_pyfunc_batch_encoding_uses_the_template():
    from framework.models.compression.prompts import encode_qa_batch

    tok = load_project_tokenizer()
    enc = encode_qa_batch(tok, [("pear: 41907.", "What is the value of pear?"), ("", "x?")])
    assert tok.decode(enc["question_ids"][0][enc["question_mask"][0]]) == QUESTION_TEMPLATE.format(
        question="What is the value of pear?")
    assert enc["context_mask"][1].sum() == 0
