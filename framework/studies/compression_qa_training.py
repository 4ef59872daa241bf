"""The compression-QA study's training stages (``framework.studies.compression_qa``), each a Lightning
``Trainer.fit`` in this process (no Ray: the models are tiny and the stages take seconds to minutes).

- the reader (stage 0): ``ReaderModule``, the answer loss over ``token_memory`` of the whole context
  (or ``multi_query_loss`` with several questions per context); every decoder weight trains;
- a compressor (stage 1): ``CurriculumCompressionModule``, the library's ``CompressionQAModule``
  (its training step, trainable set and optimizer) at the ratio curriculum's phase ratio of each step;
- the autoencoding stage (stage 1a): ``AutoencodeModule``, the same trainable set and optimizer, the loss
  of rebuilding the context from its memory.

Every module's optimizer is ``named_group_optimizers`` (AdamW over ``optim.param_groups(named=...)``, the
warmup + cosine ``optim.lr_scheduler`` stepped per optimizer step) and its gradient clipping is
``TokenLossModule.configure_gradient_clipping`` (``OptimConfig.grad_clip``, the norm clipped once per step;
Lightning calls the hook whatever the Trainer's own ``gradient_clip_val``, which stays unset). The data come in the curriculum's
order from ``StepBatches`` (the batch of step i is item i; no shuffling), and ``StepRecord`` (a Callback)
keeps the per-step record the study reports.
"""

from __future__ import annotations

import logging
import sys
import time
import warnings

import lightning.pytorch as pl
import torch

from framework.job import OptimConfig
from framework.methods.compression import CompressionQAModule, named_group_optimizers
from framework.methods.lm_module import TokenLossModule, global_token_mean
from framework.metrics.training_curve import summarize_curve
from framework.studies.compression_qa import curriculum_phase, multi_query_loss


def optim_config(study, lr: float, warmup: int) -> OptimConfig:
    """The study's optimizer settings of one stage (AdamW's betas and eps are OptimConfig's defaults)."""
    return OptimConfig(lr=lr, weight_decay=study.weight_decay, warmup_steps=warmup, min_lr_ratio=study.min_lr_ratio,
                       grad_clip=study.grad_clip)


class StepBatches(torch.utils.data.Dataset):
    """Item i is the batch of training step i (``batch_fn(i)``, built when it is read), so a DataLoader with
    batch_size=None and no shuffling yields the curriculum's batches in order."""

    def __init__(self, steps: int, batch_fn):
        self.steps, self.batch_fn = steps, batch_fn

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, step: int) -> dict:
        return self.batch_fn(step)


class ReaderModule(TokenLossModule):
    """Stage 0: a CompressorForQA trained as a plain reader of uncompressed contexts, the mean answer-token
    cross-entropy over [context ; question ; answer]; only the decoder trains (group "decoder").
    queries > 1: ``multi_query_loss`` over that many questions per context (the batch then carries
    "_source", a key of `sources`, and "_indices", the samples' indices in it)."""

    def __init__(self, reader, optim: OptimConfig, total_steps: int, queries: int = 1, sources: dict | None = None):
        for p in reader.parameters():
            p.requires_grad_(False)
        for p in reader.decoder.parameters():
            p.requires_grad_(True)
        super().__init__(reader, optim, total_steps)
        self.queries = queries
        self.sources = sources or {}
        self.groups = {"decoder": list(reader.decoder.parameters())}

    def training_step(self, batch, batch_idx):
        source, indices = batch.pop("_source", None), batch.pop("_indices", None)
        if self.queries > 1:
            loss = multi_query_loss(self.model, batch, self.sources[source], indices, self.queries)
            mean, labelled = loss.detach(), float(len(indices))
        else:
            memory = self.model.token_memory(batch["context_ids"], batch["context_mask"]).memory
            s, c = self.model.answer_loss(memory, batch["question_ids"], batch["question_mask"], batch["answer_ids"],
                                          batch["answer_mask"])
            loss, mean, labelled, _ = global_token_mean(s, c, self.trainer.world_size, batch["context_ids"].numel())
        self._last = {"loss": float(mean), "tokens_in_batch": float(batch["context_ids"].numel()),
                      "labelled_tokens": float(labelled)}
        return loss

    def configure_optimizers(self):
        return named_group_optimizers(self.groups, self.optim, self.total_steps)


class CurriculumCompressionModule(CompressionQAModule):
    """CompressionQAModule at a ratio curriculum: step s trains at the phase ratio of `phases` split equally
    over the steps (of `curriculum_steps` steps, step s * curriculum_steps // total_steps, when the stage
    follows a curriculum of another length, as the autoencoding stage does)."""

    def __init__(self, model, optim: OptimConfig, total_steps: int, settings, phases: list,
                 curriculum_steps: int | None = None, seed: int = 0):
        super().__init__(model, optim, total_steps, settings, seed=seed)
        self.phases = list(phases)
        self.curriculum_steps = curriculum_steps or total_steps

    def phase_step(self, step: int) -> int:
        """The curriculum's step whose phase (and batch) step `step` of this stage takes."""
        return step * self.curriculum_steps // self.total_steps

    def batch_compression(self, step: int) -> dict:
        return {"ratio": curriculum_phase(self.phases, self.phase_step(step), self.curriculum_steps)}


class AutoencodeModule(CurriculumCompressionModule):
    """Stage 1a (GMSA/ICAE-style autoencoding): the mean cross-entropy of rebuilding the context tokens from
    the compressor's memory after `prompt` (token ids), with the compressor's trainable set and optimizer."""

    def __init__(self, model, optim: OptimConfig, total_steps: int, settings, phases: list, curriculum_steps: int,
                 prompt: torch.Tensor, seed: int = 0):
        super().__init__(model, optim, total_steps, settings, phases, curriculum_steps, seed=seed)
        self.register_buffer("prompt", prompt.clone(), persistent=False)

    def training_step(self, batch, batch_idx):
        knobs = self.batch_compression(self.global_step)
        comp = self.model.compress(batch["context_ids"], batch["context_mask"], batch["question_ids"],
                                   batch["question_mask"], **knobs)
        prompt = self.prompt.expand(batch["context_ids"].shape[0], -1)
        s, c = self.model.answer_loss(comp.memory, prompt, torch.ones_like(prompt), batch["context_ids"],
                                      batch["context_mask"])
        loss, mean, labelled, _ = global_token_mean(s, c, self.trainer.world_size, batch["context_ids"].numel())
        self._last = {"loss": mean.item(), "tokens_in_batch": float(batch["context_ids"].numel()),
                      "labelled_tokens": labelled.item()}
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx):
        TokenLossModule.on_train_batch_end(self, outputs, batch, batch_idx)


class StepRecord(pl.Callback):
    """The study's record of one stage, from the module's ``_last`` after every step: the answer loss
    (``loss``), the auxiliary loss (``aux``), the achieved ratio and RAM's answer-segment recall, and with
    ``phases`` the achieved ratios by the step's phase ratio (``batch_compression``)."""

    def __init__(self, tag: str, steps: int, log_every: int = 0, phases: bool = False):
        self.tag, self.steps, self.log_every, self.phases = tag, steps, log_every, phases
        self.losses, self.auxes, self.extras, self.achieved = [], [], {}, {}
        self.t0, self.seconds = None, 0.0

    def on_train_start(self, trainer, pl_module):
        self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        last = pl_module._last
        self.losses.append(last["loss"])
        self.auxes.append(last.get("aux", 0.0))
        for key, name in (("ratio", "ratio"), ("recall", "answer_segment_recall")):
            if last.get(key) is not None:
                self.extras.setdefault(name, []).append(last[key])
        if self.phases:
            self.achieved.setdefault(pl_module.batch_compression(batch_idx)["ratio"], []).append(last["ratio"])
        step = len(self.losses)
        if self.log_every and step % self.log_every == 0:
            window = self.losses[-self.log_every:]
            print(f"[compression_qa] {self.tag} step {step}/{self.steps} loss {sum(window) / len(window):.4f} "
                  f"aux {self.auxes[-1]:.4f} ({time.perf_counter() - self.t0:.0f}s)", file=sys.stderr, flush=True)

    def on_train_end(self, trainer, pl_module):
        self.seconds = time.perf_counter() - self.t0

    def record(self, groups: dict) -> dict:
        out = {"train_seconds": round(self.seconds, 1), "seconds_per_step": round(self.seconds / max(1, self.steps), 4),
               "training": summarize_curve(self.losses),
               "trainable_parameters": {k: sum(p.numel() for p in v if p.requires_grad) for k, v in groups.items()}}
        if any(a != 0 for a in self.auxes):
            out["training"]["aux_loss"] = summarize_curve(self.auxes, points=5)
        for k, values in self.extras.items():
            tail = values[-max(1, len(values) // 10):]
            out["training"][f"{k}_mean_last_10pct"] = round(sum(tail) / len(tail), 4)
        return out


def fit(module, batch_fn, steps: int, study, record: StepRecord) -> dict:
    """Train `module` for `steps` steps on ``batch_fn(0)``, ``batch_fn(1)``, ... with a Trainer in this process
    (study.accelerator, one device, no logger, checkpoints or progress bar); the stage's record. The model is
    left in eval mode (and on the CPU, where Lightning's teardown puts it)."""
    loader = torch.utils.data.DataLoader(StepBatches(steps, batch_fn), batch_size=None, shuffle=False, num_workers=0)
    quiet = logging.getLogger("lightning.pytorch")
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # Lightning's pytree call on a newer torch
            trainer = pl.Trainer(accelerator=study.accelerator, devices=1, max_steps=steps, max_epochs=1,
                                 logger=False, enable_checkpointing=False, enable_progress_bar=False,
                                 enable_model_summary=False, num_sanity_val_steps=0, use_distributed_sampler=False,
                                 callbacks=[record])  # clipping: the module's configure_gradient_clipping
            module.train()  # every submodule (Lightning keeps the modes it finds: a reader's copy is in eval)
            trainer.fit(module, train_dataloaders=loader)
    finally:
        quiet.setLevel(level)
    if trainer.global_step != steps:
        raise RuntimeError(f"{record.tag}: the Trainer stopped after {trainer.global_step} of {steps} steps")
    module.model.eval()
    return record.record(module.groups)
