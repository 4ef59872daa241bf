"""Hi-Merging: the search on a loss whose optimum is known, and on real tiny models with a calibration set."""

from __future__ import annotations

import json

import pytest
import torch

from framework.merging import MergeError, MergeSpec, merge_folders
from framework.merging.hi_merging import HiMergingConfig, hierarchical_merge, layer_group, read_calibration
from merging_helpers import CALIBRATION, fine_tune, save, state_dict

pytestmark = pytest.mark.usefixtures("one_torch_thread")

GROUPS = ["layer.0", "layer.1", "other"]


def test_layer_groups():
    assert layer_group("model.layers.12.self_attn.q_proj.weight") == "layer.12"
    assert layer_group("transformer.h.3.mlp.c_fc.weight") == "layer.3"
    assert layer_group("model.embed_tokens.weight") == "other" and layer_group("lm_head.weight") == "other"


def test_search_prunes_harmful_models_and_layers_on_a_known_loss():
    # loss = 1 + sum (c_ig - t_ig)^2: model 1 hurts everywhere (t = -1), model 0's layer.1 hurts (t = -0.5)
    target = {(0, "layer.0"): 1.0, (0, "layer.1"): -0.5, (0, "other"): 1.2,
              **{(1, g): -1.0 for g in GROUPS}}

    def loss_of(coefficients):
        return 1.0 + sum((coefficients[u] - t) ** 2 for u, t in target.items())

    alpha, beta, history = hierarchical_merge(2, GROUPS, loss_of, [1.0, 1.0], HiMergingConfig(iterations=4))
    assert alpha[1] == 0.0                       # model-wise: removing model 1 lowers the loss
    assert alpha[0] == 1.0
    assert beta[0]["layer.1"] == 0.0             # layer-wise: model 0's harmful block
    assert beta[0]["layer.0"] > 0 and beta[0]["other"] > 1.0  # the stronger contributor is scaled up
    losses = [h["loss"] for h in history]
    assert losses == sorted(losses, reverse=True) and losses[-1] < losses[0]
    final = {(i, g): alpha[i] * beta[i][g] for i in range(2) for g in GROUPS}
    assert loss_of(final) == pytest.approx(losses[-1])
    # near the best a pruned model 1 allows: 1 + 3 * (0 - (-1))^2 + (0 - (-0.5))^2 with model 0's other blocks on target
    assert losses[-1] < 1.0 + 3.0 + 0.25 + 0.05


def test_search_never_raises_the_loss():
    # every unit helps and the start is optimal: nothing the search proposes can be accepted
    alpha, beta, history = hierarchical_merge(2, GROUPS, lambda c: sum((v - 1.0) ** 2 for v in c.values()),
                                              [1.0, 1.0])
    assert alpha == [1.0, 1.0] and all(v == 1.0 for b in beta.values() for v in b.values())
    assert [h["loss"] for h in history] == [0.0] * len(history)


def _loss(directory, texts) -> float:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForCausalLM.from_pretrained(directory).eval()
    total = count = 0
    with torch.no_grad():
        for text in texts:
            ids = tok(text, return_tensors="pt")["input_ids"]
            total += model(input_ids=ids, labels=ids).loss.item() * (ids.shape[1] - 1)
            count += ids.shape[1] - 1
    return total / count


def test_hi_merging_on_real_models_drops_the_harmful_one(tiny_models, calibration_file, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    helpful = fine_tune(tiny_models["base"], CALIBRATION, tmp_path / "helpful", steps=8, seed=3)
    noisy = AutoModelForCausalLM.from_pretrained(tiny_models["base"])
    torch.manual_seed(4)
    with torch.no_grad():
        for p in noisy.parameters():
            p.add_(0.2 * torch.randn_like(p))
    harmful = save(noisy, AutoTokenizer.from_pretrained(tiny_models["base"]), tmp_path / "harmful")

    out = tmp_path / "merged"
    report = merge_folders(tiny_models["base"], [helpful, harmful], str(out), MergeSpec("hi_merging"),
                           calibration=calibration_file)
    c = report.coefficients
    assert c["hi_alpha"][1] == 0.0 and c["hi_alpha"][0] > 0.0
    assert c["hi_calibration_loss"] < c["hi_calibration_loss_start"]
    # the reported loss is the output model's calibration loss, measured independently
    assert _loss(str(out), CALIBRATION) == pytest.approx(c["hi_calibration_loss"], rel=1e-4)
    assert _loss(str(out), CALIBRATION) < _loss(tiny_models["base"], CALIBRATION)
    # and the weights are base + alpha_0 * beta_0g * tau_0 per layer group
    base, a, merged = state_dict(tiny_models["base"]), state_dict(helpful), state_dict(out)
    for name in base:
        k = c["hi_alpha"][0] * c["hi_beta"]["0"][layer_group(name)]
        torch.testing.assert_close(merged[name], base[name] + k * (a[name] - base[name]), atol=1e-5, rtol=0)
    saved = json.loads((out / "merge_report.json").read_text())
    assert saved["coefficients"]["hi_alpha"] == c["hi_alpha"]


def test_calibration_errors_name_the_fix(tiny_models, tmp_path):
    with pytest.raises(MergeError, match="needs a calibration set.*--calibration"):
        merge_folders(tiny_models["base"], [tiny_models["a"]], str(tmp_path / "o"), MergeSpec("hi_merging"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"prompt": "no text"}\n')
    with pytest.raises(MergeError, match="line 2 has no non-empty \"text\""):
        read_calibration(str(bad))
    with pytest.raises(MergeError, match="no such file"):
        read_calibration(str(tmp_path / "missing.jsonl"))
