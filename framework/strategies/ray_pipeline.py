"""RayLayerPipelineStrategy: LayerPipelineStrategy inside a Ray Train worker.

Ray has already started one process per worker and created the default process group; this class
only takes the device from Ray (`root_device`). It also derives from Ray's `RayDDPStrategy`, so
`ray.train.lightning.prepare_trainer` accepts it; the sampler still shards over the data dimension
only (LayerPipelineStrategy's `distributed_sampler_kwargs` comes first in the method order). Pass
`plugins=[RayLightningEnvironment()]` to the Trainer, as for any Ray strategy.
"""

from __future__ import annotations

import torch
from ray.train.lightning import RayDDPStrategy

from .layer_pipeline import LayerPipelineStrategy


class RayLayerPipelineStrategy(LayerPipelineStrategy, RayDDPStrategy):
    strategy_name = "ray_layer_pipeline"

    @property
    def root_device(self) -> torch.device:
        import ray.train.torch

        return ray.train.torch.get_device()
