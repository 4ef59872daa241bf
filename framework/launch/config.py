"""Old home of the job sections, kept so old imports work. New code imports from where things live now:

    TrainJob, DataConfig, LaunchConfig, STRATEGIES, PIPELINE_STRATEGY   framework.job.sections (or framework.job)
    OptimConfig (the `optim` section, formerly `method`)                framework.job.optim
    BaseModelConfig (the `model` section)                               framework.job.model
    TrackingConfig (the `tracking` section)                             framework.job.tracking
    CoMeTJob (formerly JobConfig, still an alias)                        framework.methods.comet
    each other method's job (CausalLMJob, RAMJob, ...)                  beside its method in framework/methods/
"""

from __future__ import annotations

from framework.job import (PIPELINE_STRATEGY, STRATEGIES, BaseModelConfig, DataConfig, LaunchConfig,  # noqa: F401
                           OptimConfig, TrackingConfig, TrainJob, check_run_name)
from framework.methods.comet import CoMeTJob, JobConfig  # noqa: F401

__all__ = ["PIPELINE_STRATEGY", "STRATEGIES", "BaseModelConfig", "CoMeTJob", "DataConfig", "JobConfig", "LaunchConfig",
           "OptimConfig", "TrackingConfig", "TrainJob", "check_run_name"]
