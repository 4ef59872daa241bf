"""ContextAutoencoder (framework/models/compression/autoencoder.py): slots, the frozen decoder, the
reconstruction loss, cached greedy reconstruction, entropies, training, save/load and bad inputs.

Tiny random models: a Llama (hidden 64, vocab 300) as the encoder and a Qwen3 (hidden 48, vocab 320)
as the decoder, so hidden and vocabulary sizes differ; the texts use ids below 300."""

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForCausalLM

from framework.models.compression.autoencoder import (AutoencoderError, ContextAutoencoder, group_ids,
                                                      truncated_lm)
from framework.models.compression.entropy import token_nll

K = 4
LENGTHS = (9, 5, 12)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny tensors: see tests/conftest.py


def tiny_lm(family, hidden, vocab, seed, init=0.02):
    extra = {"head_dim": hidden // 4} if family == "qwen3" else {}
    cfg = AutoConfig.for_model(family, vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
                               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                               max_position_embeddings=128, initializer_range=init, **extra)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(cfg).eval()


def make(slot_mode="memory_tokens", slots=K, init=0.02, seed=0):
    enc, dec = tiny_lm("llama", 64, 300, seed, init), tiny_lm("qwen3", 48, 320, seed + 1, init)
    torch.manual_seed(seed + 2)
    return ContextAutoencoder(enc, dec, slots=slots, slot_mode=slot_mode)


def rows(lengths=LENGTHS, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 300, (n,), generator=g) for n in lengths]


def right_pad(samples, pad=299):
    width = max(len(s) for s in samples)
    ids = torch.full((len(samples), width), pad, dtype=torch.long)
    mask = torch.zeros((len(samples), width), dtype=torch.long)
    for i, s in enumerate(samples):
        ids[i, :len(s)], mask[i, :len(s)] = s, 1
    return ids, mask


@pytest.mark.parametrize("slot_mode", ["memory_tokens", "group_pool"])
def test_slots_shape_and_padding_independence(slot_mode):
    ae = make(slot_mode)
    samples = rows()
    ids, mask = right_pad(samples)
    with torch.no_grad():
        slots = ae.compress(ids, mask)
        assert slots.shape == (3, K, 48)
        for i, s in enumerate(samples):  # each row alone, unpadded, gives the same slots
            assert torch.allclose(slots[i], ae.compress(s[None])[0], atol=1e-5)
        # left padding gives the same slots as right padding
        left = torch.stack([torch.cat([torch.full((12 - len(s),), 7), s]) for s in samples])
        lmask = torch.stack([torch.cat([torch.zeros(12 - len(s)), torch.ones(len(s))]).long() for s in samples])
        assert torch.allclose(ae.compress(left, lmask), slots, atol=1e-5)


def test_memory_token_slots_are_the_encoder_states_after_the_text():
    ae = make("memory_tokens")
    samples = rows()
    slots = ae.compress(*right_pad(samples))
    with torch.no_grad():
        for i, s in enumerate(samples):
            x = torch.cat([ae.encoder.get_input_embeddings()(s), ae.memory])[None]
            h = ae.encoder.base_model(inputs_embeds=x).last_hidden_state[0, len(s):]
            assert torch.allclose(slots[i], ae.projection(h), atol=1e-5)


def test_group_pool_slots_are_group_means_of_the_encoder_states():
    ae = make("group_pool")
    samples = rows()
    ids, mask = right_pad(samples)
    with torch.no_grad():
        raw, slots = ae.slot_states(ids, mask), ae.compress(ids, mask)
        for i, s in enumerate(samples):
            h = ae.encoder.base_model(input_ids=s[None]).last_hidden_state[0]
            expected = torch.stack([g.mean(0) for g in torch.tensor_split(h, K)])
            assert torch.allclose(raw[i], expected, atol=1e-5)
            assert torch.allclose(slots[i], ae.projection(expected), atol=1e-5)
    # group sizes: as equal as possible, the longer groups first (10 tokens, 4 groups: 3 3 2 2)
    assert group_ids(torch.tensor([10]), 11, 4).tolist() == [[0, 0, 0, 1, 1, 1, 2, 2, 3, 3, 4]]


def test_decoder_frozen_and_gradients_reach_the_trainable_parts():
    ae = make("memory_tokens")
    ae.train()
    assert ae.encoder.training and not ae.decoder.training
    assert all(not p.requires_grad for p in ae.decoder.parameters())
    ae(*right_pad(rows())).loss.backward()
    assert all(p.grad is None for p in ae.decoder.parameters())
    for p in (ae.projection.weight, ae.projection.bias, ae.memory, ae.marker,
              ae.encoder.get_input_embeddings().weight, ae.encoder.model.layers[0].self_attn.q_proj.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0
    trainable = {id(p) for p in ae.trainable_parameters()}
    assert not trainable & {id(p) for p in ae.decoder.parameters()}
    assert {id(ae.memory), id(ae.marker), id(ae.projection.weight)} <= trainable
    assert make("group_pool").memory is None


@pytest.mark.parametrize("slot_mode", ["memory_tokens", "group_pool"])
def test_loss_is_cross_entropy_over_the_text_tokens_only(slot_mode):
    ae = make(slot_mode)
    samples = rows()
    out = ae(*right_pad(samples))
    total, count = 0.0, 0
    with torch.no_grad():
        for i, s in enumerate(samples):  # by hand: [slots ; marker ; text], logits at k.. predict the text
            x = torch.cat([out.slots[i], ae.marker[None], ae.decoder.get_input_embeddings()(s)])[None]
            logits = ae.decoder(inputs_embeds=x).logits[0]
            total += F.cross_entropy(logits[K:K + len(s)].float(), s, reduction="sum")
            count += len(s)
    assert int(out.num_tokens) == count == sum(LENGTHS)
    assert torch.allclose(out.loss_sum, torch.as_tensor(total), rtol=1e-5)
    assert torch.allclose(out.loss, out.loss_sum / count)


@pytest.mark.parametrize("slot_mode", ["memory_tokens", "group_pool"])
def test_cached_reconstruction_equals_full_recompute(slot_mode):
    ae = make(slot_mode, init=0.1)
    samples = rows()
    ids, mask = right_pad(samples)
    got = ae.reconstruct(ids, mask)
    assert [len(r) for r in got] == list(LENGTHS)
    with torch.no_grad():
        slots = ae.compress(ids, mask)
        for i, s in enumerate(samples):
            seq = torch.cat([slots[i], ae.marker[None]])
            tokens = []
            for _ in range(len(s)):
                token = int(ae.decoder(inputs_embeds=seq[None]).logits[0, -1].argmax())
                tokens.append(token)
                seq = torch.cat([seq, ae.decoder.get_input_embeddings()(torch.tensor([token]))])
            assert got[i] == tokens
    assert [len(r) for r in ae.reconstruct(ids, mask, max_new_tokens=3)] == [3, 3, 3]


def test_entropies_match_token_nll():
    ae = make("memory_tokens")
    ids, mask = right_pad(rows())
    ent = ae.entropies(ids, mask)
    assert ent["decoder"].shape == ent["encoder"].shape == (3,)
    assert torch.allclose(ent["decoder"], token_nll(ae.decoder, ids, mask))
    assert torch.allclose(ent["encoder"], token_nll(ae.encoder, ids, mask))


def test_training_makes_reconstruction_faithful():
    """A repeated-token task: 16 texts, each one token repeated 8 times, k = 8 memory tokens."""
    torch.manual_seed(0)
    ae = make("memory_tokens", slots=8, init=0.1)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 300, (16, 1), generator=g).expand(16, 8).clone()
    mask = torch.ones_like(ids)

    def mean_scores():
        scores = ae.reconstruction_scores(ids, mask)
        return {m: sum(s[m] for s in scores) / len(scores) for m in ("f1", "bleu", "rouge_l")}

    before = mean_scores()
    opt = torch.optim.Adam(ae.trainable_parameters(), lr=1e-2)
    ae.train()
    for _ in range(100):
        loss = ae(ids, mask).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    ae.eval()
    after = mean_scores()
    assert before["f1"] < 0.2
    assert after["f1"] > 0.9 and after["rouge_l"] > 0.9 and after["bleu"] > 0.8


@pytest.mark.parametrize("slot_mode", ["memory_tokens", "group_pool"])
def test_save_load_round_trip(tmp_path, slot_mode):
    ae = make(slot_mode, init=0.1)
    with torch.no_grad():  # move the learned vectors off their start so the round trip is meaningful
        ae.projection.bias.add_(0.5)
        ae.marker.mul_(3.0)
    ids, mask = right_pad(rows())
    with torch.no_grad():
        loss, recon = ae(ids, mask).loss_sum, ae.reconstruct(ids, mask)
    ae.save_pretrained(tmp_path / "ae")
    back = ContextAutoencoder.from_pretrained(tmp_path / "ae")
    assert (back.slots, back.slot_mode) == (K, slot_mode)
    with torch.no_grad():
        assert torch.equal(back(ids, mask).loss_sum, loss)
    assert back.reconstruct(ids, mask) == recon
    assert not any(p.requires_grad for p in back.decoder.parameters())
    assert not list((tmp_path / "ae").rglob("*.bin")) and not list((tmp_path / "ae").rglob("*.pt"))
    enc = AutoModelForCausalLM.from_pretrained(tmp_path / "ae" / "encoder")
    dec = AutoModelForCausalLM.from_pretrained(tmp_path / "ae" / "decoder")
    assert (enc.config.model_type, dec.config.model_type) == ("llama", "qwen3")
    with pytest.raises(AutoencoderError, match="not an autoencoder checkpoint"):
        ContextAutoencoder.from_pretrained(tmp_path / "ae" / "encoder")


def test_bad_inputs_name_the_cause():
    enc, dec = tiny_lm("llama", 64, 300, 0), tiny_lm("qwen3", 48, 200, 1)
    ae = ContextAutoencoder(enc, dec, slots=2)
    ids = torch.tensor([[5, 250, 7]])
    with pytest.raises(AutoencoderError, match=r"token id 250.*decoder's 200.*below both"):
        ae(ids, torch.ones_like(ids))
    with pytest.raises(AutoencoderError, match="below both"):
        ae.reconstruct(ids)
    # the padded position's out-of-range id is ignored
    assert ae(ids, torch.tensor([[1, 0, 1]])).num_tokens == 2
    with pytest.raises(AutoencoderError, match="tokenizer has 300 ids"):
        ContextAutoencoder(enc, dec, slots=2, text_vocab_size=300)
    for bad in (0, -1, 2.5):
        with pytest.raises(AutoencoderError, match="k >= 1"):
            ContextAutoencoder(enc, dec, slots=bad)
    with pytest.raises(AutoencoderError, match="slot_mode='icae' is unknown"):
        ContextAutoencoder(enc, dec, slots=2, slot_mode="icae")
    with pytest.raises(AutoencoderError, match="same module"):
        ContextAutoencoder(enc, enc, slots=2)
    with pytest.raises(AutoencoderError, match=r"rows \[0\] have fewer real tokens"):
        ContextAutoencoder(enc, dec, slots=4, slot_mode="group_pool")(torch.tensor([[5, 6, 7]]))
    assert issubclass(AutoencoderError, ValueError)


def test_truncated_lm_copies_the_first_layers():
    big = tiny_lm("llama", 64, 300, 0)
    small = truncated_lm(big, 1)
    assert small.config.num_hidden_layers == 1 and big.config.num_hidden_layers == 2
    for key, value in small.state_dict().items():
        assert torch.equal(value, big.state_dict()[key]), key
    assert small.get_input_embeddings().weight.data_ptr() != big.get_input_embeddings().weight.data_ptr()
    ContextAutoencoder(small, tiny_lm("qwen3", 48, 320, 1), slots=2)(torch.tensor([[5, 6, 7]]))
