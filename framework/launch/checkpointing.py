"""Step-based checkpoints: every N optimizer steps (and at the end) each rank reports to Ray Train.

`ray.train.report` is a barrier in Train V2, so every rank calls it the same number of times;
only rank 0 passes a checkpoint directory. Rank 0 also hands the directory to the MLflow logger,
which uploads it in the background and deletes the local copy once it is sent.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass

import lightning.pytorch as pl

from framework.tracking.checkpoints import ARTIFACT_DIR, STATE_FILE, step_dir_name, write_manifest

EXPORT_DIR = "model"


@dataclass
class DataCursor:
    """Global samples consumed at optimizer step `step`, valid for any later step of this attempt."""

    base_step: int
    base_samples: int
    global_batch: int
    seed: int

    def at(self, step: int) -> int:
        return self.base_samples + (step - self.base_step) * self.global_batch


class StepCheckpointReport(pl.Callback):
    def __init__(self, every_n_steps: int, cursor: DataCursor, run_id: str | None, mlflow_logger=None,
                 export_fn=None, scratch_dir: str | None = None, stop_poll=None, schedule: dict | None = None):
        self.every_n_steps = every_n_steps
        self.stop_poll = stop_poll  # framework.launch.preemption.WorkerStopPoll: the driver got SIGTERM
        self.preempted = False
        self.cursor = cursor
        self.run_id = run_id
        self.mlflow_logger = mlflow_logger
        self.export_fn = export_fn  # (trainer, pl_module, directory) -> None, called on every rank at the end
        self.scratch_dir = scratch_dir
        self.schedule = schedule  # the run's plan, written to every manifest (framework.launch.data.AttemptPlan)
        self._last_saved = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if step > 0 and step % self.every_n_steps == 0 and step != self._last_saved:
            self._save_and_report(trainer, pl_module, final=False)
        if self.stop_poll is not None and step > 0 and not self.preempted:
            # every rank takes part (a collective), so all of them stop after the same step
            if trainer.strategy.reduce_boolean_decision(self.stop_poll.seen.is_set(), all=False):
                self._stop(trainer, pl_module)

    def _stop(self, trainer, pl_module) -> None:
        """Preempted: checkpoint the step reached (unless it just was), flush MLflow soon, stop training."""
        from framework.launch.preemption import FLUSH_TIMEOUT_S

        if trainer.global_step != self._last_saved:
            self._save_and_report(trainer, pl_module, final=False)
        self.preempted = True
        trainer.should_stop = True
        for logger in trainer.loggers:
            if hasattr(logger, "shorten_flush"):
                logger.shorten_flush(FLUSH_TIMEOUT_S)
        if trainer.global_rank == 0:
            print(f"[longctx] stopping on request: checkpoint at step {trainer.global_step} reported", flush=True)

    def on_train_end(self, trainer, pl_module):
        if self.preempted:  # not the end of training: no final checkpoint, no exported model
            return
        self._save_and_report(trainer, pl_module, final=True)

    def _save_and_report(self, trainer, pl_module, final: bool) -> None:
        import ray.train

        step = trainer.global_step
        rank0 = trainer.global_rank == 0
        directory = tempfile.mkdtemp(prefix=f"longctx-{step_dir_name(step)}-", dir=self.scratch_dir)
        already_logged = step == self._last_saved
        # the final checkpoint always holds the state too: it is what Ray hands back to a re-run of this job
        trainer.save_checkpoint(os.path.join(directory, STATE_FILE), weights_only=False)
        if final and self.export_fn is not None:
            self.export_fn(trainer, pl_module, os.path.join(directory, EXPORT_DIR))
        if rank0:
            write_manifest(directory, step=step, samples_consumed=self.cursor.at(step),
                           global_batch=self.cursor.global_batch, world_size=trainer.world_size,
                           mlflow_run_id=self.run_id, data_seed=self.cursor.seed, exclude=(EXPORT_DIR,),
                           schedule=self.schedule)
        metrics = {"step": step, "final": final}
        loss = trainer.callback_metrics.get("loss")
        if loss is not None:
            metrics["loss"] = float(loss)
        checkpoint = ray.train.Checkpoint.from_directory(directory) if rank0 else None
        name = step_dir_name(step) + ("_final" if final else "")
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=name)
        self._last_saved = step
        keep_for_upload = rank0 and self.mlflow_logger is not None and not already_logged
        if keep_for_upload:
            self.mlflow_logger.log_checkpoint_dir(directory, f"{ARTIFACT_DIR}/{step_dir_name(step)}",
                                                  exclude=(EXPORT_DIR,))
        else:
            shutil.rmtree(directory, ignore_errors=True)
