"""The attention baselines as a method: fine-tune a Hugging Face causal LM with full attention, or with
softmax sliding-window attention over the same weights (framework.models.sliding). These are the
baselines the CoMeT paper compares against.

    python recipes/baseline_finetune.py --preset tiny --attention sliding --attention.window 64
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F

from framework.config import ConfigError
from framework.job import TrainJob
from framework.methods.lm_module import TokenLossModule
from framework.methods.mlflow_model import CAUSAL_LM
from framework.methods.registry import MethodSpec
from framework.models.loading import is_hf_dir

ATTENTION_KINDS = ("full", "sliding")
IGNORE_INDEX = -100


@dataclass
class AttentionConfig:
    """kind: full (every token sees all before it) or sliding (each layer sees the last `window` tokens).
    window: the sliding window, in tokens. gradient_checkpointing: recompute each layer in backward.
    loss_piece: tokens per slice of the LM head + loss, so a 32k x vocab logits tensor never exists."""

    kind: str = "full"
    window: int = 4096
    gradient_checkpointing: bool = False
    loss_piece: int = 4096

    def __post_init__(self) -> None:
        if self.kind not in ATTENTION_KINDS:
            raise ConfigError(f"attention.kind={self.kind!r} is not one of {ATTENTION_KINDS}. "
                              "Fix: --attention full, or --attention sliding")
        if self.window < 1:
            raise ConfigError(f"attention.window={self.window} must be a positive number of tokens. "
                              "Fix: e.g. --attention.window 4096")
        if self.loss_piece < 1:
            raise ConfigError(f"attention.loss_piece={self.loss_piece} must be >= 1. Fix: e.g. 4096")


@dataclass
class CausalLMJob(TrainJob):
    """A baseline's job: the shared sections plus `attention`."""

    METHOD: ClassVar[str] = "causal_lm"

    attention: AttentionConfig = field(default_factory=AttentionConfig)


def next_token_targets(labels: torch.Tensor, document_ids: torch.Tensor | None = None) -> torch.Tensor:
    """targets[:, t] = labels[:, t + 1]; -100 at the end, and where t + 1 starts another document
    (a packed window's documents do not predict each other's first token)."""
    targets = torch.full_like(labels, IGNORE_INDEX)
    targets[:, :-1] = labels[:, 1:]
    if document_ids is not None:
        targets[:, :-1][document_ids[:, 1:] != document_ids[:, :-1]] = IGNORE_INDEX
    return targets


def token_loss_sum(model, batch: dict, piece: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of next-token cross-entropies, labelled tokens) for a transformers causal LM. The LM head
    and the loss run on `piece` positions at a time, and only on labelled ones."""
    hidden = model.base_model(input_ids=batch["input_ids"]).last_hidden_state
    head = model.get_output_embeddings()
    targets = next_token_targets(batch["labels"], batch.get("document_ids")).to(hidden.device)
    total = hidden.new_zeros((), dtype=torch.float32)
    count = torch.zeros((), dtype=torch.long, device=hidden.device)
    for start in range(0, hidden.shape[1], piece):
        t = targets[:, start:start + piece]
        keep = t != IGNORE_INDEX
        if not keep.any():
            continue
        logits = head(hidden[:, start:start + piece][keep]).float()
        total = total + F.cross_entropy(logits, t[keep], reduction="sum")
        count = count + keep.sum()
    if count == 0:  # keeps every parameter in the graph, so DDP sees a (zero) gradient for each
        total = total + 0.0 * head(hidden[:, :1]).float().sum()
    return total, count


class CausalLMModule(TokenLossModule):
    """Next-token training of a transformers causal LM (any family, any attention): the global
    token-mean loss, shared with every method."""

    def __init__(self, model, optim, total_steps: int, loss_piece: int = 4096):
        super().__init__(model, optim, total_steps)
        self.loss_piece = loss_piece

    def loss_sum(self, batch):
        return token_loss_sum(self.model, batch, self.loss_piece)


def save_hf_model(model, directory: str, tokenizer) -> None:
    """save_pretrained (safetensors) with the tokenizer beside it; LoRA adapters (optim.backbone=lora) are
    merged, so the directory is a plain Hugging Face checkpoint."""
    from framework.models.lora import has_lora, plain_state_dict

    extra = {"state_dict": plain_state_dict(model)} if has_lora(model) else {}
    model.save_pretrained(directory, safe_serialization=True, **extra)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)


def build_model(cfg: CausalLMJob, tokenizer):
    from framework.methods.base_model import build_base_model
    from framework.models.sliding import SlidingWindowError, sliding_window_model

    model = build_base_model(cfg.model, vocab_size=len(tokenizer), seed=cfg.launch.seed)
    if cfg.attention.kind == "sliding":
        try:
            model = sliding_window_model(model, cfg.attention.window)
        except SlidingWindowError as err:
            raise ConfigError(f"attention.kind=sliding: {err}") from None
    if cfg.attention.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model


def validate(cfg: CausalLMJob) -> None:
    if cfg.attention.kind == "sliding":
        from framework.models.sliding import SLIDING_FAMILIES

        family = cfg.model.base.split(":", 1)[1] if cfg.model.base.startswith("random:") else None
        if family is not None and family not in SLIDING_FAMILIES:
            raise ConfigError(f"attention.kind=sliding needs a {'/'.join(SLIDING_FAMILIES)} model; model.base is "
                              f"{cfg.model.base!r}. Fix: use one of those families, or --attention full")
        if cfg.attention.window >= cfg.data.seq_len:
            print(f"[longctx] note: attention.window={cfg.attention.window} >= data.seq_len={cfg.data.seq_len}: "
                  "in training, sliding attention equals full attention")


def load_model(directory: str):
    from framework.models.loading import load_causal_lm

    return load_causal_lm(directory)


METHOD = MethodSpec(
    name="causal_lm", job=CausalLMJob, build_model=build_model, load_model=load_model, save_model=save_hf_model,
    lightning_module=lambda model, cfg, steps: CausalLMModule(model, cfg.optim, steps, cfg.attention.loss_piece),
    validate=validate, recognizes=is_hf_dir, fallback=True, mlflow_model=CAUSAL_LM,
)
