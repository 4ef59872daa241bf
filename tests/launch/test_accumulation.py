"""launch.accumulate_grad_batches: k micro-batches per optimizer step train as one batch k times larger."""

import lightning.pytorch as pl
import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from framework.methods.causal_lm import CausalLMModule
from framework.methods.optim import OptimConfig

VOCAB, SEQ = 64, 32


def _model() -> Qwen3ForCausalLM:
    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=16)
    cfg._attn_implementation = "sdpa"
    return Qwen3ForCausalLM(cfg)


class _Gradients(pl.Callback):
    """The gradient the optimizer step receives."""

    def __init__(self):
        self.grads = {}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.grads = {n: p.grad.detach().clone() for n, p in pl_module.model.named_parameters() if p.grad is not None}


def _fit(batches, accumulate: int) -> dict:
    module = CausalLMModule(_model(), OptimConfig(lr=1e-2, warmup_steps=0, grad_clip=0.0), total_steps=1)
    seen = _Gradients()
    trainer = pl.Trainer(max_steps=1, accumulate_grad_batches=accumulate, accelerator="cpu", devices=1,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False, callbacks=[seen],
                         enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    assert trainer.global_step == 1
    return seen.grads


def test_two_micro_batches_of_one_equal_one_batch_of_two():
    ids = torch.randint(0, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(3))
    whole = _fit([{"input_ids": ids, "labels": ids.clone()}], accumulate=1)
    halves = _fit([{"input_ids": ids[i:i + 1], "labels": ids[i:i + 1].clone()} for i in range(2)], accumulate=2)
    assert whole and halves.keys() == whole.keys()
    for name in whole:
        torch.testing.assert_close(halves[name], whole[name], rtol=1e-4, atol=1e-6)
