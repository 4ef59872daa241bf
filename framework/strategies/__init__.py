"""Lightning strategies. `LayerPipelineStrategy` (layer_pipeline.py) runs CoMeT's wavefront pipeline over
chunks; `RayLayerPipelineStrategy` (ray_pipeline.py) is the same under Ray Train. The pieces without
Lightning: `mesh` (pipeline x data mesh and checks), `p2p` (autograd-aware transfers), `wavefront`
(the pipelined forward)."""

from .mesh import PipelineConfigError, PipelineMesh, check_chunks, check_job, check_mesh

__all__ = ["PipelineConfigError", "PipelineMesh", "check_chunks", "check_job", "check_mesh",
           "LayerPipelineStrategy", "RayLayerPipelineStrategy"]


def __getattr__(name):
    if name == "LayerPipelineStrategy":
        from .layer_pipeline import LayerPipelineStrategy

        return LayerPipelineStrategy
    if name == "RayLayerPipelineStrategy":
        from .ray_pipeline import RayLayerPipelineStrategy

        return RayLayerPipelineStrategy
    raise AttributeError(name)
