"""What every Ray Train worker runs: build the model and data, then a Lightning `Trainer.fit`.

Resume order: Ray's own newest checkpoint (a restarted worker group, or a re-run of the same job),
else the MLflow checkpoint the driver resolved from `--resume`, else a fresh start (optionally from
registered weights).
"""

from __future__ import annotations

import os
import shutil
import tempfile

import torch

from framework.config import from_dict
from framework.launch.checkpointing import DataCursor, StepCheckpointReport
from framework.job import TrainJob
from framework.launch.data import attempt_plan, build_source, rank_loader
from framework.methods.registry import find_model_dir, get_method, method_for
from framework.tracking.checkpoints import STATE_FILE, download_run_checkpoint, read_manifest


WORLD_SIZE_TAG = "longctx.resume.world_size_changes"  # every resume on another world size or global batch


def build_model(cfg: TrainJob, tokenizer, init_dir: str | None = None):
    """The method's model: from a saved directory (registered weights), else fresh per cfg.model."""
    spec = method_for(cfg)
    model = spec.load_model(init_dir) if init_dir is not None else spec.build_model(cfg, tokenizer)
    return model.train()


def _resolve_checkpoint(payload: dict, scratch: str) -> str | None:
    """A local checkpoint directory to resume from, or None."""
    import ray.train

    ray_ckpt = ray.train.get_checkpoint()
    if ray_ckpt is not None:
        local = os.path.join(scratch, "ray-resume")
        ray_ckpt.to_directory(local)
        return local
    resume = payload.get("resume") or {}
    if resume.get("checkpoint_dir"):
        return resume["checkpoint_dir"]
    if resume.get("checkpoint_artifact"):
        return download_run_checkpoint(payload["tracking_uri"], payload["run_id"], resume["checkpoint_artifact"],
                                       os.path.join(scratch, "mlflow-resume"))
    return None


def _init_weights_dir(payload: dict, scratch: str) -> str | None:
    uri = (payload.get("resume") or {}).get("init_weights_uri")
    if not uri:
        return None
    import mlflow

    mlflow.set_tracking_uri(payload["tracking_uri"])
    mlflow.set_registry_uri(payload["tracking_uri"])
    local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=os.path.join(scratch, "init"))
    return find_model_dir(local)


def _strategy(cfg: TrainJob):
    from ray.train.lightning import RayDDPStrategy, RayFSDPStrategy

    if cfg.launch.strategy == "fsdp":
        return RayFSDPStrategy(state_dict_type="full")
    if cfg.launch.strategy == "pipeline":
        from framework.strategies.ray_pipeline import RayLayerPipelineStrategy

        # run.validate let only a method whose spec lists "pipeline" (and so gives pipeline_chunk) get here
        return RayLayerPipelineStrategy(pipeline_size=cfg.launch.pipeline_size, seq_len=cfg.data.seq_len,
                                        chunk_size=method_for(cfg).pipeline_chunk(cfg))
    return RayDDPStrategy(find_unused_parameters=False)


def _exporter(cfg: TrainJob, tokenizer):
    """Writes the trained model as a from_pretrained directory (safetensors) on rank 0."""
    spec = method_for(cfg)

    def export(trainer, module, directory: str) -> None:
        state = trainer.strategy.lightning_module_state_dict()  # collective under FSDP
        if trainer.global_rank != 0:
            return
        if cfg.launch.strategy == "fsdp":
            from framework.models.lora import merge_lora_state_dict

            model = build_model(cfg, tokenizer)  # no adapters: LoRA is merged into the gathered weights
            state = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
            if getattr(cfg.optim, "backbone", "full") == "lora":
                state = merge_lora_state_dict(state, cfg.optim.lora_alpha / cfg.optim.lora_rank)
            model.load_state_dict(state)
        else:
            model = module.model
        spec.save_model(model, directory, tokenizer)

    return export


def train_loop_per_worker(payload: dict) -> None:
    import lightning.pytorch as pl
    import ray.train
    from ray.train.lightning import RayLightningEnvironment, prepare_trainer

    from framework.methods.base_model import load_tokenizer
    from framework.tracking.logger import MLflowRunLogger

    import mlflow

    # the driver's store, for what a method resolves on the worker (e.g. models:/ URIs of the models it pairs)
    mlflow.set_tracking_uri(payload["tracking_uri"])
    mlflow.set_registry_uri(payload["tracking_uri"])
    spec = get_method(payload["method"])
    cfg = from_dict(spec.job, payload["job"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    scratch = tempfile.mkdtemp(prefix=f"longctx-rank{rank}-")
    pl.seed_everything(cfg.launch.seed + rank, workers=True, verbose=False)

    ckpt_dir = _resolve_checkpoint(payload, scratch)
    manifest = read_manifest(ckpt_dir) if ckpt_dir else None
    init_dir = None if ckpt_dir else _init_weights_dir(payload, scratch)
    if rank == 0:
        init_uri = (payload.get("resume") or {}).get("init_weights_uri")
        where = (f"step {manifest['step']} ({ckpt_dir})" if manifest
                 else f"the weights of {init_uri}" if init_dir else "scratch")
        print(f"[longctx] worker group of {world} starting from {where}", flush=True)

    tokenizer = load_tokenizer(cfg.model) if init_dir is None else _tokenizer_from(init_dir)
    model = build_model(cfg, tokenizer, init_dir)
    source = build_source(cfg.data, tokenizer)

    # the ranks of one pipeline group share a data replica (mesh: rank = data_index * pipeline_size + stage)
    data_world = cfg.data_replicas()
    data_rank = rank // (world // data_world)
    global_batch = cfg.global_batch()
    plan = attempt_plan(cfg.data, cfg.launch.max_steps, payload.get("num_samples"), global_batch, manifest)
    cursor = DataCursor(plan.start_step, plan.start_samples, global_batch, cfg.data.seed)
    loader = rank_loader(source, cfg.data, data_rank, data_world, start_sample=cursor.at(cursor.base_step))
    if rank == 0 and manifest and (manifest.get("world_size") != world or manifest["data"]["global_batch"] != global_batch):
        _note_world_size_change(payload, manifest, world, global_batch, plan)

    logger = None
    if rank == 0:
        logger = MLflowRunLogger(payload["tracking_uri"], payload["run_id"], payload["spill_dir"],
                                 cfg.tracking.flush_timeout_s)
    callback = StepCheckpointReport(
        cfg.launch.checkpoint_every_n_steps, cursor, payload["run_id"],
        mlflow_logger=logger if cfg.tracking.log_checkpoints else None,
        export_fn=_exporter(cfg, tokenizer), scratch_dir=scratch, stop_poll=_stop_poll(payload),
        schedule=plan.manifest_entry())
    module = spec.lightning_module(model, cfg, plan.lr_steps())
    trainer = pl.Trainer(
        max_steps=plan.max_steps,
        accumulate_grad_batches=cfg.launch.accumulate_grad_batches,
        accelerator="auto",
        devices="auto",
        strategy=_strategy(cfg),
        plugins=[RayLightningEnvironment()],
        precision=cfg.precision(),
        callbacks=[callback],
        logger=logger if logger is not None else False,
        enable_checkpointing=False,
        use_distributed_sampler=False,
        log_every_n_steps=1,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        enable_progress_bar=False,
        enable_model_summary=rank == 0,
        default_root_dir=scratch,
    )
    trainer = prepare_trainer(trainer)
    ckpt_path = os.path.join(ckpt_dir, STATE_FILE) if ckpt_dir else None
    try:
        trainer.fit(module, train_dataloaders=loader, ckpt_path=ckpt_path, weights_only=True)
    finally:  # local copies of what we started from (a checkpoint can be tens of GB); a restart fetches its own
        for copy in ("ray-resume", "mlflow-resume", "init"):
            shutil.rmtree(os.path.join(scratch, copy), ignore_errors=True)


def _note_world_size_change(payload: dict, manifest: dict, world: int, global_batch: int, plan) -> None:
    """A resume on another world size (or accumulation): say so, and record it on the run."""
    note = (f"step {manifest['step']}: {manifest.get('world_size')} -> {world} workers, global batch "
            f"{manifest['data']['global_batch']} -> {global_batch}; the schedule keeps its "
            f"{plan.plan_steps * plan.plan_batch} samples, so this attempt trains to step {plan.max_steps}")
    print(f"[longctx] resumed on another world size: {note}", flush=True)
    if not payload.get("run_id"):
        return
    from mlflow import MlflowClient

    client = MlflowClient(payload["tracking_uri"])
    earlier = client.get_run(payload["run_id"]).data.tags.get(WORLD_SIZE_TAG)
    client.set_tag(payload["run_id"], WORLD_SIZE_TAG, f"{earlier}; {note}" if earlier else note)


def _stop_poll(payload: dict):
    """Watch the driver's stop request (SIGTERM on the driver: framework.launch.preemption)."""
    actor = payload.get("stop_request")
    if actor is None:
        return None
    from framework.launch.preemption import WorkerStopPoll

    return WorkerStopPoll(actor)


def _tokenizer_from(directory: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(directory)
    if tok.pad_token_id is None and tok.eos_token_id is not None:
        tok.pad_token = tok.eos_token
    return tok
