"""What every method's LightningModule shares: the global token-mean loss, AdamW groups, warmup +
cosine, gradient clipping, per-step metrics and the RNG state in checkpoints.

A method subclasses `TokenLossModule` and says how a batch becomes (sum of token losses, labelled
tokens), and which parameters it adds to the base model (they get `memory_lr_multiplier`).

How the base model itself trains (`optim.backbone`: full, frozen or lora) is applied here, once, when
the module is built: before any optimizer exists and identically on resume, so a checkpoint's state
dict (adapters included) always matches the module it is loaded into.
"""

from __future__ import annotations

import math
import random
import resource
import sys
import time

import lightning.pytorch as pl
import torch
import torch.distributed as dist

from framework.job import OptimConfig, OptimConfigError
from framework.methods.optim import build_optimizer


def peak_memory_mb(device: torch.device) -> float:
    """Peak accelerator memory on GPU; peak resident set size of this process on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def _all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def global_token_mean(loss_sum: torch.Tensor, num_tokens: torch.Tensor, world_size: int, batch_tokens: int):
    """The loss to backpropagate on this rank so that data-parallel gradient averaging yields the
    gradient of sum(loss over every labelled token of every rank) / (labelled tokens of every rank).

    Returns (loss_for_backward, global mean loss, global labelled tokens, global input tokens)."""
    stats = torch.stack([num_tokens.float().detach(), loss_sum.detach().float(),
                         torch.tensor(float(batch_tokens), device=loss_sum.device)])
    stats = _all_reduce_sum(stats)
    global_tokens = stats[0].clamp(min=1.0)
    return loss_sum * world_size / global_tokens, stats[1] / global_tokens, stats[0], stats[2]


def lora_root(model: torch.nn.Module):
    """Where LoRA goes: the model if it is a Hugging Face PreTrainedModel, else its `.backbone` if that is
    one (CoMeT); None otherwise (no save path would merge the adapters)."""
    from transformers import PreTrainedModel

    for candidate in (model, getattr(model, "backbone", None)):
        if isinstance(candidate, PreTrainedModel):
            return candidate
    return None


def apply_backbone(model: torch.nn.Module, added, cfg: OptimConfig) -> list:
    """Make `model` train as cfg.backbone says: full (no change), frozen (only `added` trains) or lora (the
    base weights frozen, adapters on cfg.lora_targets of the backbone). Returns the parameters it froze."""
    if cfg.backbone == "full":
        return []
    added = list(added)
    keep = {id(p) for p in added}
    if cfg.backbone == "frozen" and not added:
        raise OptimConfigError("optim.backbone='frozen' freezes everything but the parameters the method adds, "
                               "and this method adds none: nothing would train. Fix: --optim.backbone full or lora")
    frozen = [p for p in model.parameters() if id(p) not in keep and p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    if cfg.backbone == "lora":
        from framework.models.lora import LoRAError, add_lora

        root = lora_root(model)
        if root is None:
            raise OptimConfigError(f"optim.backbone='lora' needs a Hugging Face model (or one wrapped as "
                                   f"`.backbone`, like CoMeT) so the saved model has the adapters merged; this "
                                   f"method trains a {type(model).__name__}. Fix: --optim.backbone full or frozen")
        try:
            add_lora(root, cfg.lora_targets, cfg.lora_rank, cfg.lora_alpha, exclude=added)
        except LoRAError as err:
            raise OptimConfigError(f"optim.lora_targets={list(cfg.lora_targets)}: {err}. Fix: set "
                                   "--optim.lora_targets to some of those names") from None
    return frozen


class TokenLossModule(pl.LightningModule):
    """Trains `model` on the mean loss over every labelled token of the global batch (all ranks),
    not a mean of per-rank means, so ranks with more labelled tokens weigh more."""

    def __init__(self, model: torch.nn.Module, optim: OptimConfig, total_steps: int):
        super().__init__()
        self.model = model
        self.optim = optim
        self.total_steps = total_steps
        self._step_started = None
        self._backbone_frozen = apply_backbone(model, self.added_parameters(), optim)

    # ------------------------------------------------------------------ what a method defines
    def loss_sum(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum of the token losses of this rank's batch, number of labelled tokens)."""
        raise NotImplementedError

    def added_parameters(self):
        """Parameters the method adds to the base model; they train at lr x memory_lr_multiplier."""
        return []

    # ------------------------------------------------------------------ backbone
    def check_backbone(self) -> None:
        """Raise when a subclass re-enabled parameters that optim.backbone froze (a method that picks its
        own trainable set, e.g. the compression methods, must run with optim.backbone=full)."""
        thawed = sum(p.requires_grad for p in self._backbone_frozen)
        if thawed:
            raise OptimConfigError(f"optim.backbone={self.optim.backbone!r}: {type(self).__name__} chooses its own "
                                   f"trainable parameters and re-enabled {thawed} that the backbone setting froze. "
                                   "Fix: --optim.backbone full, and use that method's own settings")

    def setup(self, stage: str) -> None:
        """Before Lightning restores a checkpoint or wraps the model: check the backbone setting and report
        (rank 0) how many parameters train."""
        from framework.models.lora import lora_modules, parameter_counts

        self.check_backbone()
        if self._trainer is not None and self._trainer.global_rank != 0:
            return
        trainable, total = parameter_counts(self.model)
        note = ""
        if self.optim.backbone == "lora":
            note = (f", LoRA rank {self.optim.lora_rank} on {len(lora_modules(self.model))} layers "
                    f"({', '.join(self.optim.lora_targets)})")
        print(f"[longctx] optim.backbone={self.optim.backbone}: {trainable:,} of {total:,} parameters train "
              f"({100.0 * trainable / max(total, 1):.2f}%){note}", flush=True)

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        self.check_backbone()
        opt, sched = build_optimizer(self.model, self.added_parameters(), self.optim, self.total_steps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        if self.optim.grad_clip > 0:
            self.clip_gradients(optimizer, gradient_clip_val=self.optim.grad_clip, gradient_clip_algorithm="norm")

    # ------------------------------------------------------------------ steps
    def on_train_batch_start(self, batch, batch_idx):
        self._step_started = time.perf_counter()

    def training_step(self, batch, batch_idx):
        loss_sum, num_tokens = self.loss_sum(batch)
        loss, mean, labelled, tokens = global_token_mean(loss_sum, num_tokens, self.trainer.world_size,
                                                         batch["input_ids"].numel())
        self._last = {"loss": mean.item(), "tokens_in_batch": tokens.item(), "labelled_tokens": labelled.item()}
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx):
        elapsed = time.perf_counter() - (self._step_started or time.perf_counter())
        last = self._last
        metrics = {
            "train/loss": last["loss"],
            "train/ppl": math.exp(min(last["loss"], 50.0)),
            "train/tokens_per_s": last["tokens_in_batch"] / max(elapsed, 1e-9),
            "train/labelled_tokens": last["labelled_tokens"],
            "train/peak_mem_mb": peak_memory_mb(self.device),
        }
        opt = self.trainer.optimizers[0]
        for group in opt.param_groups:
            metrics[f"lr/{group.get('name', 'group')}"] = group["lr"]
        self.log_dict(metrics, on_step=True, on_epoch=False, prog_bar=False, rank_zero_only=True, batch_size=1)
        self.log("loss", last["loss"], prog_bar=True, rank_zero_only=True, logger=False, batch_size=1)

    # ------------------------------------------------------------------ state beyond Lightning's own
    def on_save_checkpoint(self, checkpoint):
        checkpoint["rng"] = {"torch": torch.get_rng_state(), "python": random.getstate()}
        if torch.cuda.is_available():
            checkpoint["rng"]["cuda"] = torch.cuda.get_rng_state_all()

    def on_load_checkpoint(self, checkpoint):
        rng = checkpoint.get("rng")
        if rng:
            torch.set_rng_state(rng["torch"])
            random.setstate(_as_tuple(rng["python"]))
            if "cuda" in rng and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])


def _as_tuple(state):
    return tuple(_as_tuple(s) if isinstance(s, list) else s for s in state)
