"""The autoencoder method: its trainable set and step, its checks, and the greedy-reconstruction
evaluation (framework/eval/autoencoder_eval.py) that the study runs on held-out texts."""

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from framework.config import ConfigError
from framework.eval.autoencoder_eval import entropy_correlations, evaluate
from framework.job import DataConfig, OptimConfig
from framework.methods.autoencoder import AutoencoderJob, AutoencoderModule, AutoencoderSettings, build_model, validate
from framework.methods.lm_module import global_token_mean
from framework.models.compression.autoencoder import ContextAutoencoder
from framework.models.compression.entropy import token_nll

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny tensors: see tests/conftest.py
VOCAB = 300


def tiny_lm(hidden=32, seed=0, vocab=VOCAB):
    cfg = AutoConfig.for_model("qwen3", vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
                               num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2, head_dim=hidden // 4,
                               max_position_embeddings=128, tie_word_embeddings=False)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(cfg)


def tiny_ae(slot_mode="memory_tokens"):
    torch.manual_seed(2)
    return ContextAutoencoder(tiny_lm(32, 0), tiny_lm(48, 1), slots=4, slot_mode=slot_mode)


def batch(n=3, length=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(3, VOCAB, (n, length), generator=g)}


@pytest.mark.parametrize("slot_mode", ["memory_tokens", "group_pool"])
def test_a_step_trains_encoder_projection_and_slots_and_never_the_decoder(slot_mode):
    ae = tiny_ae(slot_mode)
    module = AutoencoderModule(ae, OptimConfig(lr=1e-3), total_steps=4)
    loss_sum, count = module.loss_sum(batch())
    assert int(count) == 3 * 12
    loss, mean, _, _ = global_token_mean(loss_sum, count, 1, 36)
    assert float(mean) == pytest.approx(float(ae(**batch()).loss.detach()), rel=1e-5)   # the token mean of the model
    loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in ae.decoder.parameters())
    head = ae.encoder.get_output_embeddings().weight
    assert not head.requires_grad and head.grad is None   # the slots never reach the encoder's untied head
    body = [p for n, p in ae.encoder.named_parameters() if not n.startswith("lm_head")]
    assert all(p.grad is not None for p in body)
    own = list(ae.projection.parameters()) + [ae.marker] + ([ae.memory] if ae.memory is not None else [])
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in own)
    opt = module.configure_optimizers()["optimizer"]
    optimised = {id(p) for g in opt.param_groups for p in g["params"]}
    assert optimised == {id(p) for p in body + own}
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}   # the new parts train at lr x memory_lr_multiplier
    assert lrs["memory"] / lrs["base"] == pytest.approx(OptimConfig().memory_lr_multiplier)


def test_evaluate_gives_per_sample_scores_and_the_models_entropies():
    ae = tiny_ae()
    texts = [batch(1, n, seed=n)["input_ids"][0] for n in (6, 9, 12, 7, 10)]
    report = evaluate(ae, texts, batch_size=2)
    assert [r["index"] for r in report["records"]] == list(range(5))
    assert [r["tokens"] for r in report["records"]] == [6, 9, 12, 7, 10]
    for r in report["records"]:
        assert all(0.0 <= r[k] <= 1.0 for k in ("f1", "bleu", "rouge_l"))
    ids = torch.zeros(5, 12, dtype=torch.long)
    mask = torch.zeros(5, 12, dtype=torch.long)
    for i, t in enumerate(texts):
        ids[i, :len(t)], mask[i, :len(t)] = t, 1
    expected = ae.entropies(ids, mask)
    scores = ae.reconstruction_scores(ids, mask)
    for i, r in enumerate(report["records"]):
        assert r["encoder_entropy"] == pytest.approx(float(expected["encoder"][i]), rel=1e-4)
        assert r["decoder_entropy"] == pytest.approx(float(expected["decoder"][i]), rel=1e-4)
        assert r["f1"] == pytest.approx(scores[i]["f1"])
    assert report["means"]["f1"] == pytest.approx(sum(r["f1"] for r in report["records"]) / 5)
    # another LM may measure the encoder's entropy (the study passes the encoder's pretrained LM)
    other = tiny_lm(32, 7)
    measured = evaluate(ae, texts[:2], encoder_lm=other)["records"]
    assert measured[0]["encoder_entropy"] == pytest.approx(float(token_nll(other, texts[0][None])[0]), rel=1e-4)
    corr = entropy_correlations(report["records"])
    assert set(corr) == {"encoder", "decoder"} and corr["encoder"]["n"] == 5
    assert corr["encoder"]["rho"] is None or -1 <= corr["encoder"]["rho"] <= 1


def test_build_model_pairs_two_saved_lms(tmp_path):
    from data_pipelines.tokenizer import load_project_tokenizer

    tok = load_project_tokenizer()
    for name, hidden in (("enc", 32), ("dec", 48)):
        tiny_lm(hidden, vocab=len(tok)).save_pretrained(tmp_path / name)
    job = AutoencoderJob(autoencoder=AutoencoderSettings(encoder=str(tmp_path / "enc"), decoder=str(tmp_path / "dec"),
                                                         slots=4), data=DataConfig(kind="text", seq_len=32))
    validate(job)
    model = build_model(job, tok)
    assert model.slots == 4 and model.decoder.config.hidden_size == 48 and model.encoder.config.hidden_size == 32
    job.autoencoder.decoder = str(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="no such directory.*Fix"):
        validate(job)


@pytest.mark.parametrize("change, needle", [
    (dict(decoder=""), "autoencoder.decoder is empty"),
    (dict(kind="qa_facts"), "reconstructs plain texts"),
    (dict(slot_mode="group_pool", slots=64), "group_pool needs at least one token per slot"),
])
def test_validate_names_the_setting_and_the_fix(tmp_path, change, needle):
    kind = change.pop("kind", "text")
    settings = AutoencoderSettings(**{"decoder": str(tmp_path), "slots": 8, **change})
    with pytest.raises(ConfigError, match=needle):
        validate(AutoencoderJob(autoencoder=settings, data=DataConfig(kind=kind, seq_len=32)))


def test_bad_settings_fail_when_the_config_is_built():
    with pytest.raises(ConfigError, match="slot_mode"):
        AutoencoderSettings(slot_mode="pooling")
    with pytest.raises(ConfigError, match="slots"):
        AutoencoderSettings(slots=0)
