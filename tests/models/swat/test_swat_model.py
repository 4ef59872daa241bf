"""SWATConfig validation, causality and information reach, loss, and training-side options."""

import ast
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import framework.models.swat as swat_pkg
from framework.models.swat import SWATConfig, SWATConfigError, SWATForCausalLM

VOCAB = 61


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny tensors: see tests/conftest.py


def tiny(seed=0, dtype=torch.float32, **overrides):
    params = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, window=6,
                  block_size=4)
    params.update(overrides)
    torch.manual_seed(seed)
    return SWATForCausalLM(SWATConfig(**params)).to(dtype).eval()


@pytest.mark.parametrize(
    "kwargs, field, rule",
    [
        (dict(num_attention_heads=5, hidden_size=40), "num_attention_heads", "must be even"),
        (dict(window=0), "window", "positive integer"),
        (dict(window=-3), "window", "positive integer"),
        (dict(normalization="relu"), "normalization", "must be one of"),
        (dict(slopes="alibi"), "slopes", "must be one of"),
        (dict(hidden_size=30), "hidden_size", "divisible by num_attention_heads"),
        (dict(hidden_size=24, num_attention_heads=8, slopes="none"), "hidden_size", "odd head_dim"),
        (dict(block_size=0), "block_size", "positive integer or None"),
        (dict(rope_theta=0.0), "rope_theta", "positive number"),
        (dict(num_hidden_layers=0), "num_hidden_layers", "positive integer"),
    ],
)
def test_invalid_configs_name_field_rule_and_fix(kwargs, field, rule):
    params = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4)
    params.update(kwargs)
    with pytest.raises(SWATConfigError, match=rule) as err:
        SWATConfig(**params)
    message = str(err.value)
    assert f"SWATConfig.{field}=" in message and "Fix:" in message
    assert isinstance(err.value, ValueError)


def test_config_defaults_and_sliding_window_alias():
    cfg = SWATConfig(vocab_size=VOCAB, hidden_size=96, num_hidden_layers=2, num_attention_heads=6, slopes="negative")
    assert cfg.window == 128 and cfg.sliding_window == 128 and cfg.query_block_size == 128
    assert cfg.intermediate_size == 256  # 8/3 * 96 rounded up to a multiple of 64
    assert cfg.model_type == "swat" and cfg.normalization == "sigmoid" and cfg.rope is True
    assert SWATConfig.from_dict(cfg.to_dict()).to_dict() == cfg.to_dict()
    assert "sliding_window" not in cfg.to_dict()


@pytest.mark.parametrize("normalization", ["sigmoid", "softmax"])
def test_reach_is_exactly_one_plus_window_minus_one_times_layers(normalization):
    """d logits[m] / d embeddings[n] is non-zero exactly for m - (w-1)L <= n <= m."""
    layers, window, n, m = 3, 4, 24, 17
    model = tiny(num_hidden_layers=layers, window=window, block_size=3, normalization=normalization,
                 initializer_range=0.2, dtype=torch.float64)
    embeds = model.get_input_embeddings()(torch.randint(0, VOCAB, (1, n))).detach().requires_grad_(True)
    model(inputs_embeds=embeds, use_cache=False).logits[0, m].sum().backward()
    touched = (embeds.grad[0].abs().sum(-1) > 0).nonzero().flatten().tolist()
    assert touched == list(range(m - (window - 1) * layers, m + 1))
    assert len(touched) == 1 + (window - 1) * layers


def test_loss_is_shifted_cross_entropy_ignoring_minus_100():
    model = tiny()
    ids = torch.randint(0, VOCAB, (2, 15))
    labels = ids.clone()
    labels[0, :5] = -100
    out = model(input_ids=ids, labels=labels)
    expected = F.cross_entropy(out.logits[:, :-1].reshape(-1, VOCAB).float(), labels[:, 1:].reshape(-1),
                               ignore_index=-100)
    torch.testing.assert_close(out.loss, expected)


def test_logits_to_keep_and_tuple_outputs():
    model = tiny()
    ids = torch.randint(0, VOCAB, (2, 11))
    with torch.no_grad():
        full = model(input_ids=ids).logits
        last = model(input_ids=ids, logits_to_keep=1).logits
        as_tuple = model(input_ids=ids, use_cache=False, return_dict=False)
    torch.testing.assert_close(last, full[:, -1:])
    torch.testing.assert_close(as_tuple[0], full)


@pytest.mark.filterwarnings("ignore:`gradient_checkpointing_enable` is deprecated:FutureWarning")
def test_gradient_checkpointing_gives_the_same_gradients():
    model = tiny(block_size=None).train()
    ids = torch.randint(0, VOCAB, (2, 20))
    model(input_ids=ids, labels=ids).loss.backward()
    plain = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert all(layer.gradient_checkpointing for layer in model.model.layers)
    model(input_ids=ids, labels=ids).loss.backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, plain[name], msg=name)


def test_tied_embeddings_share_one_tensor():
    model = tiny(tie_word_embeddings=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert tiny().lm_head.weight is not tiny().model.embed_tokens.weight


def test_model_package_imports_no_lightning_or_ray():
    for path in Path(swat_pkg.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert name.split(".")[0] not in {"lightning", "pytorch_lightning", "ray"}, (path.name, name)
