"""optim.backbone: full, frozen or LoRA training of the base model, through the real LightningModules;
the LoRA merge (plain Hugging Face checkpoints) and the learning rates of the three kinds of parameters."""

import copy

import lightning.pytorch as pl
import pytest
import torch
from transformers import AutoModelForCausalLM, Qwen3Config, Qwen3ForCausalLM

from framework.config import ConfigError, apply_overrides, describe
from framework.job import OptimConfig, OptimConfigError
from framework.methods.causal_lm import CausalLMModule, save_hf_model
from framework.methods.comet import CoMeTModule
from framework.models.comet import CoMeTConfig, CoMeTForCausalLM
from framework.models.lora import (LoRAError, add_lora, lora_modules, lora_parameters, merge_lora,
                                   merge_lora_state_dict, parameter_counts, plain_state_dict)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

VOCAB, SEQ = 64, 32


def tiny_base(seed: int = 0, tied: bool = False) -> Qwen3ForCausalLM:
    torch.manual_seed(seed)
    cfg = Qwen3Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=16, tie_word_embeddings=tied)
    cfg._attn_implementation = "sdpa"
    return Qwen3ForCausalLM(cfg)


def tiny_comet(seed: int = 0) -> CoMeTForCausalLM:
    return CoMeTForCausalLM.from_base(tiny_base(seed), CoMeTConfig(chunk_size=8, global_mem_size=2, temp_stride=4,
                                                                   temp_budget=4))


def batches(n: int = 2):
    gen = torch.Generator().manual_seed(3)
    out = []
    for _ in range(n):
        ids = torch.randint(0, VOCAB, (2, SEQ), generator=gen)
        out.append({"input_ids": ids, "labels": ids.clone()})
    return out


def fit(module, steps: int = 2) -> None:
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(batches(steps), batch_size=None))


def optim(**kw) -> OptimConfig:
    return OptimConfig(**{"lr": 1e-2, "warmup_steps": 0, "grad_clip": 0.0, **kw})


def comet_logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def snapshot(module: torch.nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# ---------------------------------------------------------------------------------------------- frozen
def test_frozen_backbone_stays_bit_identical_while_the_memory_trains(capsys):
    model = tiny_comet()
    backbone_before, memory_before = snapshot(model.backbone), snapshot(model)
    module = CoMeTModule(model, optim(backbone="frozen"), total_steps=2)
    assert all(not p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.memory_parameters())
    fit(module)
    assert "optim.backbone=frozen" in capsys.readouterr().out
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, backbone_before[key]), key
    changed = [n for n, p in model.named_parameters() if not n.startswith("backbone.")
               and not torch.equal(p.detach(), memory_before[n])]
    assert "compress_embed" in changed and "readout_embed" in changed
    assert any(n.startswith("memory_nets.") for n in changed)


def test_frozen_needs_parameters_the_method_adds():
    with pytest.raises(OptimConfigError, match="adds none"):
        CausalLMModule(tiny_base(), optim(backbone="frozen"), total_steps=2)


# ---------------------------------------------------------------------------------------------- lora
def test_lora_trains_adapters_only_and_saves_a_plain_merged_checkpoint(tmp_path):
    model = tiny_comet()
    original = copy.deepcopy(model)
    ids = batches(1)[0]["input_ids"]
    module = CoMeTModule(model, optim(backbone="lora", lora_rank=4, lora_alpha=8.0), total_steps=2)
    adapted = lora_modules(model.backbone)
    assert len(adapted) == 2 * 4 and all(n.rsplit(".", 1)[-1] in ("q_proj", "k_proj", "v_proj", "o_proj")
                                         for n in adapted)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters()
                         if not n.startswith("backbone.") or n.endswith((".lora_A", ".lora_B"))}
    # LoRA starts as the very same function (B = 0)
    torch.testing.assert_close(comet_logits(model, ids), comet_logits(original, ids), rtol=0, atol=0)
    lora_before = {n: p.detach().clone() for n, p in model.backbone.named_parameters() if "lora_" in n}
    fit(module)

    for key, value in original.backbone.state_dict().items():  # the original weights, under their own names
        assert torch.equal(model.backbone.state_dict()[key], value), key
    assert all(not torch.equal(p.detach(), lora_before[n])
               for n, p in model.backbone.named_parameters() if n.endswith(".lora_B"))
    assert not torch.allclose(comet_logits(model, ids), comet_logits(original, ids))

    # the merged state dict is a plain Qwen3 one and computes what the adapted backbone computes
    plain = plain_state_dict(model.backbone)
    assert set(plain) == set(original.backbone.state_dict())
    fresh = Qwen3ForCausalLM(model.backbone.config).eval()
    fresh.load_state_dict(plain)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(ids).logits, model.backbone(ids).logits, rtol=0, atol=1e-5)
    scale = 8.0 / 4
    merged = merge_lora_state_dict(model.backbone.state_dict(), scale)
    assert all(torch.allclose(merged[k], plain[k], atol=1e-6) for k in plain)

    # CoMeT's save: a transformers checkpoint with the adapters merged (no adapter key), round-tripping the logits
    model.save_pretrained(tmp_path / "comet")
    assert not any("lora_" in k for k in model.comet_state_dict())
    from safetensors import safe_open

    with safe_open(str(tmp_path / "comet" / "model.safetensors"), "pt") as saved:
        assert not any("lora_" in k for k in saved.keys())
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "comet").eval()
    assert isinstance(hf, CoMeTForCausalLM)
    with torch.no_grad():
        torch.testing.assert_close(hf.backbone(ids).logits, model.backbone(ids).logits, rtol=0, atol=1e-5)
    loaded = CoMeTForCausalLM.from_pretrained(tmp_path / "comet").eval()
    assert not lora_modules(loaded)
    torch.testing.assert_close(comet_logits(loaded, ids), comet_logits(model, ids), rtol=0, atol=1e-5)


def test_lora_state_dict_resumes_into_a_freshly_built_module():
    cfg = optim(backbone="lora")
    first = CoMeTModule(tiny_comet(), cfg, total_steps=2)
    fit(first)
    again = CoMeTModule(tiny_comet(), cfg, total_steps=2)  # the same adapters exist at construction
    again.load_state_dict(first.state_dict(), strict=True)
    ids = batches(1)[0]["input_ids"]
    first.model.eval(), again.model.eval()
    torch.testing.assert_close(comet_logits(again.model, ids), comet_logits(first.model, ids), rtol=0, atol=0)


def test_lora_adapters_are_the_same_on_every_build_and_leave_the_global_rng_alone():
    torch.manual_seed(5)
    state = torch.get_rng_state()
    a, b = tiny_base(), tiny_base()
    torch.set_rng_state(state)
    add_lora(a, ["q_proj"], 4, 8.0)
    assert torch.equal(torch.get_rng_state(), state)
    add_lora(b, ["q_proj"], 4, 8.0)
    assert all(torch.equal(x, y) for x, y in zip(lora_parameters(a), lora_parameters(b)))


def test_causal_lm_lora_saves_a_plain_checkpoint(tmp_path):
    model = tiny_base()
    module = CausalLMModule(model, optim(backbone="lora", lora_targets=["q_proj", "v_proj", "down_proj"]), 2)
    fit(module)
    trainable, total = parameter_counts(model)
    assert trainable == sum(p.numel() for p in lora_parameters(model)) and trainable < total
    ids = batches(1)[0]["input_ids"]
    save_hf_model(model, str(tmp_path / "plain"), tokenizer=None)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "plain").eval()
    model.eval()
    with torch.no_grad():
        expected = model(ids).logits
        torch.testing.assert_close(hf(ids).logits, expected, rtol=0, atol=1e-5)
        assert merge_lora(model) and not lora_modules(model)  # folding in place keeps the function
        torch.testing.assert_close(model(ids).logits, expected, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------- learning rates
@pytest.mark.parametrize("mode, expected", [
    ("full", {"base": 1e-4, "base_no_decay": 1e-4, "memory": 5e-3, "memory_no_decay": 5e-3}),
    ("frozen", {"memory": 5e-3, "memory_no_decay": 5e-3}),
    ("lora", {"lora": 1e-4, "memory": 5e-3, "memory_no_decay": 5e-3}),
])
def test_param_groups_carry_the_backbone_lr_and_the_memory_lr(mode, expected):
    model = tiny_comet()
    module = CoMeTModule(model, OptimConfig(lr=1e-3, memory_lr_multiplier=5.0, backbone=mode, backbone_lr=1e-4), 4)
    opt = module.configure_optimizers()["optimizer"]
    lrs = {g["name"]: g["initial_lr"] for g in opt.param_groups}
    assert lrs == pytest.approx(expected)
    memory = {id(p) for p in model.memory_parameters()}
    seen = {id(p) for g in opt.param_groups for p in g["params"]}
    assert seen == {id(p) for p in model.parameters() if p.requires_grad}
    assert memory <= seen


def test_backbone_lr_defaults_to_lr():
    module = CoMeTModule(tiny_comet(), OptimConfig(lr=1e-3, memory_lr_multiplier=5.0), 4)
    lrs = {g["name"]: g["initial_lr"] for g in module.configure_optimizers()["optimizer"].param_groups}
    assert lrs["base"] == pytest.approx(1e-3) and lrs["memory"] == pytest.approx(5e-3)


# ---------------------------------------------------------------------------------------------- bad settings
@pytest.mark.parametrize("kw, field", [
    ({"backbone": "partial"}, "optim.backbone"),
    ({"lora_rank": 0}, "optim.lora_rank"),
    ({"lora_alpha": 0.0}, "optim.lora_alpha"),
    ({"backbone_lr": 0.0}, "optim.backbone_lr"),
    ({"lora_targets": []}, "optim.lora_targets"),
])
def test_bad_backbone_settings_name_the_field_and_the_fix(kw, field):
    with pytest.raises(OptimConfigError, match=field) as err:
        OptimConfig(**kw)
    assert "Fix:" in str(err.value)


def test_a_lora_target_matching_nothing_lists_the_linear_layers():
    with pytest.raises(OptimConfigError, match=r"optim.lora_targets.*'qkv'.*q_proj.*Fix") as err:
        CoMeTModule(tiny_comet(), optim(backbone="lora", lora_targets=("q_proj", "qkv")), 2)
    assert "up_proj" in str(err.value)


def test_lora_refuses_a_tied_weight_and_a_method_added_layer():
    with pytest.raises(LoRAError, match="tied"):
        add_lora(tiny_base(tied=True), ["lm_head"], 4, 8.0)
    model = tiny_comet()
    memory_linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.memory_nets.named_modules()
                            if isinstance(m, torch.nn.Linear)})
    with pytest.raises(LoRAError, match="match no linear layer"):  # the method's own layers never get LoRA
        add_lora(model, memory_linear[:1], 4, 8.0, exclude=model.memory_parameters())


def test_a_method_that_rethaws_the_backbone_is_stopped():
    class Thawing(CoMeTModule):
        def __init__(self, *args):
            super().__init__(*args)
            for p in self.model.parameters():
                p.requires_grad_(True)

    module = Thawing(tiny_comet(), optim(backbone="frozen"), 2)
    with pytest.raises(OptimConfigError, match="optim.backbone='frozen'.*Fix: --optim.backbone full"):
        module.configure_optimizers()


def test_the_fields_parse_from_the_command_line_and_are_listed():
    from framework.methods.comet import CoMeTJob

    cfg = apply_overrides(CoMeTJob(), ["--optim.backbone", "lora", "--optim.backbone_lr", "1e-4",
                                       "--optim.lora_rank=16", "--optim.lora_targets", '["q_proj", "v_proj"]'])
    m = cfg.optim
    assert (m.backbone, m.backbone_lr, m.lora_rank, m.lora_targets) == ("lora", 1e-4, 16, ("q_proj", "v_proj"))
    assert apply_overrides(cfg, ["--optim.backbone_lr", "none"]).optim.backbone_lr is None
    with pytest.raises(ConfigError, match="optim.backbone"):
        apply_overrides(CoMeTJob(), ["--optim.backbone", "half"])
    listed = "\n".join(describe(CoMeTJob()))
    for name in ("backbone", "backbone_lr", "lora_rank", "lora_alpha", "lora_targets"):
        assert f"--optim.{name} " in listed
