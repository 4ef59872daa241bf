"""RAM and COMI as methods: only the intended parameters receive gradient, the optimizer groups
follow the trainable set, per-batch ratios are a function of the step, and bad jobs are refused."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models" / "compression"))
from compression_helpers import batch, tiny_base  # noqa: E402

from framework.config import ConfigError, apply_overrides  # noqa: E402
from framework.job import OptimConfig, tiny_qwen3  # noqa: E402
from framework.methods.comi import COMIJob, COMIModule, COMISettings
from framework.methods.compression import set_trainable
from framework.methods.ram import RAMJob, RAMModule, RAMSettings
from framework.methods.registry import get_method
from framework.models.compression.lora import LoRALinear
from framework.models.compression.skeleton import CompressorForQA


def _model(settings, method):
    return CompressorForQA(tiny_base(), settings.model_config(method))


def _grads(model, settings, method):
    set_trainable(model, settings)
    out = model(**batch(), **({"keep_fraction": 0.25} if method == "ram" else {}))
    (out.loss_sum / out.num_tokens + out.aux_loss).backward()
    return {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


def test_ram_trains_encoder_alignment_and_decoder_qkv_only():
    settings = RAMSettings(encoder_layers=1, segment_size=8, decoder="attention")
    model = _model(settings, "ram")
    got = _grads(model, settings, "ram")
    decoder = {n for n in got if n.startswith("decoder.")}
    assert decoder and all(n.split(".")[-2] in ("q_proj", "k_proj", "v_proj") for n in decoder)
    assert any(n.startswith("encoder.") for n in got) and any(n.startswith("align.") for n in got)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert "decoder.lm_head.weight" in frozen and not (got & frozen)


def test_comi_lora_trains_only_the_adapters_in_the_decoder():
    settings = COMISettings(encoder_layers=1, alignment="block", decoder="lora", lora_rank=4, ratio=4)
    model = _model(settings, "comi")
    assert any(isinstance(m, LoRALinear) for m in model.decoder.modules())
    got = _grads(model, settings, "comi")
    decoder = {n for n in got if n.startswith("decoder.")}
    assert decoder and all(".lora_" in n for n in decoder)
    assert any(n.startswith("align.layer.") for n in got)


def test_frozen_encoder_and_decoder_leave_only_the_alignment():
    settings = COMISettings(encoder_layers=1, alignment="linear", decoder="frozen", train_encoder=False, ratio=4)
    model = _model(settings, "comi")
    got = _grads(model, settings, "comi")
    assert got and all(n.startswith("align.") for n in got)


def test_optimizer_groups_follow_the_trainable_set():
    settings = RAMSettings(encoder_layers=1, segment_size=8, decoder="attention")
    module = RAMModule(_model(settings, "ram"), OptimConfig(lr=1e-3), 10, settings)
    groups = module.configure_optimizers()["optimizer"].param_groups
    names = {g["name"] for g in groups}
    assert names <= {"encoder", "encoder_no_decay", "alignment", "alignment_no_decay", "decoder", "decoder_no_decay"}
    in_opt = {id(p) for g in groups for p in g["params"]}
    assert in_opt == {id(p) for p in module.model.parameters() if p.requires_grad}


@pytest.mark.parametrize("decoder", ["attention", "full", "lora"])
def test_optimizer_groups_are_the_named_groups_with_decay_on_matrices_only(decoder):
    """configure_optimizers builds its groups with optim.param_groups(named=...): the names, order, LRs and weight
    decays of the groups it built itself before (each trainable set, decay on matrices, then no-decay)."""
    settings = RAMSettings(encoder_layers=1, segment_size=8, decoder=decoder, lora_rank=4)
    cfg = OptimConfig(lr=1e-3, weight_decay=0.1)
    module = RAMModule(_model(settings, "ram"), cfg, 10, settings)
    expected = []
    for name, params in module.groups.items():
        for decay in (True, False):
            chosen = [p for p in params if p.requires_grad and (p.ndim >= 2) == decay]
            if chosen:
                expected.append((name + ("" if decay else "_no_decay"), 1e-3, 0.1 if decay else 0.0,
                                 [id(p) for p in chosen]))
    opt = module.configure_optimizers()["optimizer"]
    got = [(g["name"], g["initial_lr"], g["weight_decay"], [id(p) for p in g["params"]]) for g in opt.param_groups]
    assert got == expected and {e[0] for e in expected} >= {"encoder", "alignment", "decoder"}
    assert opt.defaults["betas"] == tuple(cfg.betas) and opt.defaults["eps"] == cfg.eps


def test_per_batch_ratio_and_keep_fraction_depend_only_on_the_step():
    comi = COMIModule(_model(COMISettings(encoder_layers=1, ratio=4), "comi"), OptimConfig(), 10,
                      COMISettings(encoder_layers=1, train_ratios=[4, 8, 16]), seed=3)
    draws = [comi.batch_compression(s)["ratio"] for s in range(30)]
    assert set(draws) == {4, 8, 16} and draws == [comi.batch_compression(s)["ratio"] for s in range(30)]
    settings = RAMSettings(encoder_layers=1, segment_size=8, keep_sampling="uniform")
    ram = RAMModule(_model(settings, "ram"), OptimConfig(), 10, settings)
    rhos = [ram.batch_compression(s)["keep_fraction"] for s in range(50)]
    assert all(0 < r <= 1 for r in rhos) and len(set(rhos)) == 50
    assert RAMModule(_model(RAMSettings(encoder_layers=1), "ram"), OptimConfig(), 10,
                     RAMSettings(encoder_layers=1)).batch_compression(0) == {}


def test_jobs_refuse_non_qa_data_and_too_deep_encoders():
    spec = get_method("ram")
    job = RAMJob(model=tiny_qwen3())
    job = apply_overrides(job, ["--data.kind", "text"])
    with pytest.raises(ConfigError, match="data.kind='text'.*qa_facts"):
        spec.validate(job)
    job = apply_overrides(COMIJob(model=tiny_qwen3()), ["--data.kind", "qa_facts"])
    with pytest.raises(ConfigError, match="encoder_layers=8 exceeds"):
        get_method("comi").validate(job)
    with pytest.raises(ConfigError, match="compression.decoder"):
        RAMSettings(decoder="everything")
    with pytest.raises(ConfigError, match="keep_sampling"):
        RAMSettings(keep_sampling="beta")
