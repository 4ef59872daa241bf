"""The sections of a job, in one place: plain dataclasses with no Ray, Lightning or torch import.

    model     BaseModelConfig   (framework.job.model)     which Hugging Face causal LM a method starts from
    optim     OptimConfig       (framework.job.optim)     the optimiser, schedule and backbone training mode
    data      DataConfig        (framework.job.sections)  the data source and batch
    launch    LaunchConfig      (framework.job.sections)  workers, strategy, checkpoints, precision
    tracking  TrackingConfig    (framework.job.tracking)  the MLflow store and registered model
    eval      EvalConfig        (framework.job.evaluation) the evaluations of the registered model, after training

`TrainJob` (framework.job.sections) holds them; each method's job subclasses it beside its method in
`framework/methods/<method>.py` (e.g. `CoMeTJob` in framework.methods.comet) and adds its own section.
"""

from framework.job.evaluation import (EVAL_TASKS, BaseCompareEval, EvalConfig, HeldoutLMEval, PasskeyEval,
                                       PerplexityEval)
from framework.job.model import RANDOM_FAMILIES, RANDOM_PREFIX, BaseModelConfig, BaseModelError, tiny_qwen3
from framework.job.optim import BACKBONE_MODES, OptimConfig, OptimConfigError
from framework.job.sections import PIPELINE_STRATEGY, STRATEGIES, DataConfig, LaunchConfig, TrainJob
from framework.job.tracking import TrackingConfig, check_run_name

__all__ = ["BACKBONE_MODES", "BaseCompareEval", "BaseModelConfig", "BaseModelError", "DataConfig", "EVAL_TASKS",
           "EvalConfig", "HeldoutLMEval", "LaunchConfig", "OptimConfig", "OptimConfigError", "PIPELINE_STRATEGY",
           "PasskeyEval", "PerplexityEval", "RANDOM_FAMILIES", "RANDOM_PREFIX", "STRATEGIES", "TrackingConfig", "TrainJob",
           "check_run_name", "tiny_qwen3"]
