"""CoMeT as a method: its LightningModule, how its model is built and saved, and its own checks.

The module wraps a built `CoMeTForCausalLM`; the memory modules train at lr x memory_lr_multiplier.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from framework.config import ConfigError
from framework.job import PIPELINE_STRATEGY, TrainJob
from framework.methods.lm_module import TokenLossModule
from framework.methods.mlflow_model import generation_model
from framework.methods.registry import MethodSpec
from framework.models.comet import CoMeTConfig, CoMeTForCausalLM
from framework.models.loading import is_comet_dir


@dataclass
class CoMeTJob(TrainJob):
    """CoMeT's job: the shared sections plus `comet`, the memory settings."""

    METHOD: ClassVar[str] = "comet"

    comet: CoMeTConfig = field(default_factory=CoMeTConfig)


JobConfig = CoMeTJob  # its name before each method's job lived beside its method; old recipes import it


class CoMeTModule(TokenLossModule):
    """Trains a CoMeT model: the loss is the global token mean over every labelled token."""

    def added_parameters(self):
        return self.model.memory_parameters()

    def loss_sum(self, batch):
        out = self.model(
            input_ids=batch["input_ids"],
            labels=batch["labels"],
            attention_mask=batch.get("attention_mask"),
            document_ids=batch.get("document_ids"),
            chunk_ids=batch.get("chunk_ids"),  # data.options.chunking: the paper's random chunking
            return_logits=False,
        )
        return out.loss_sum, out.num_tokens


def build_model(cfg: CoMeTJob, tokenizer) -> CoMeTForCausalLM:
    """The base model of cfg.model (pretrained or random) with CoMeT's memory plugged in."""
    from framework.methods.base_model import build_base_model

    base = build_base_model(cfg.model, vocab_size=len(tokenizer), seed=cfg.launch.seed)
    with torch.random.fork_rng():
        torch.manual_seed(cfg.launch.seed + 1)
        model = CoMeTForCausalLM.from_base(base, cfg.comet)
    if cfg.comet.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model


def validate(cfg: CoMeTJob) -> None:
    if cfg.data.seq_len <= cfg.comet.chunk_size:
        raise ConfigError(f"data.seq_len={cfg.data.seq_len} fits in one chunk (comet.chunk_size={cfg.comet.chunk_size}); "
                          "CoMeT's memory is then never read. Fix: make seq_len a few chunks long, or lower chunk_size")
    gated = cfg.comet.uses_global_memory and cfg.comet.global_gate == "learned"
    schedule = cfg.data.options.get("seq_len_schedule") or []
    shortest = min([cfg.data.seq_len] + [p[1] for p in schedule if isinstance(p, (list, tuple)) and len(p) == 2
                                         and isinstance(p[1], int)])
    if gated and shortest <= 2 * cfg.comet.chunk_size:
        raise ConfigError(f"data.seq_len={shortest} (the shortest scheduled length) is only two chunks of "
                          f"comet.chunk_size={cfg.comet.chunk_size}: the global-memory gate first acts on the third "
                          "chunk, so it would get no gradient (and DDP stops on unused parameters). "
                          "Fix: seq_len > 2 x chunk_size, or lower chunk_size")
    chunking = cfg.data.options.get("chunking")
    if chunking:
        size = chunking.get("chunk_size") if isinstance(chunking, dict) else None
        if isinstance(size, int) and size > cfg.comet.chunk_size:
            raise ConfigError(f"data.options.chunking.chunk_size={size} exceeds comet.chunk_size="
                              f"{cfg.comet.chunk_size}: a planned chunk must fit in one of the model's chunks. "
                              f"Fix: chunking.chunk_size <= {cfg.comet.chunk_size}")
        if cfg.launch.strategy == PIPELINE_STRATEGY:
            raise ConfigError("data.options.chunking (chunk plans) is not supported by the layer pipeline, which "
                              "splits fixed chunks across ranks. Fix: remove data.options.chunking, or use "
                              "launch.strategy=ddp")
    if cfg.launch.strategy == PIPELINE_STRATEGY:
        from framework.strategies.mesh import PipelineConfigError, check_job

        try:
            check_job(cfg.data.seq_len, cfg.comet.chunk_size, cfg.launch.num_workers, cfg.launch.pipeline_size)
        except PipelineConfigError as err:
            raise ConfigError(f"{err} (data.seq_len={cfg.data.seq_len}, comet.chunk_size={cfg.comet.chunk_size}, "
                              f"launch.num_workers={cfg.launch.num_workers}, "
                              f"launch.pipeline_size={cfg.launch.pipeline_size})") from None


def _save(model: CoMeTForCausalLM, directory: str, tokenizer) -> None:
    model.save_pretrained(directory, tokenizer=tokenizer)


MLFLOW_MODEL = generation_model(
    "comet-causal-lm", "Fix: write it with CoMeTForCausalLM.save_pretrained(model_dir, tokenizer=tokenizer)")

METHOD = MethodSpec(
    name="comet", job=CoMeTJob, build_model=build_model, load_model=CoMeTForCausalLM.from_pretrained,
    save_model=_save, lightning_module=lambda model, cfg, steps: CoMeTModule(model, cfg.optim, steps),
    validate=validate, recognizes=is_comet_dir, mlflow_model=MLFLOW_MODEL,
    strategies=("ddp", "fsdp", "pipeline"), pipeline_chunk=lambda cfg: cfg.comet.chunk_size,
)
