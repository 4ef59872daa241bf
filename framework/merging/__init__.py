"""Model merging over the state dicts of Hugging Face causal LMs: task arithmetic, TIES, DARE, NAN
coefficients as a plug-in for each, and Hi-Merging (hierarchical iterative merging on a calibration set).

    from framework.merging import MergeSpec, merge_folders
    report = merge_folders("base/", ["math/", "code/"], "merged/", MergeSpec(method="ties", density=0.5))

Pure torch and safetensors (plus transformers for Hi-Merging's calibration loss): no Lightning, Ray or
MLflow here. ``longctx merge`` (framework/merge_cli.py) resolves registry URIs and registers the result.
See docs/merging.md for the exact definitions.
"""

from framework.merging.errors import MergeError
from framework.merging.methods import BASE_METHODS, METHODS, MergeSpec
from framework.merging.merge import MergeReport, merge_folders

__all__ = ["BASE_METHODS", "METHODS", "MergeError", "MergeReport", "MergeSpec", "merge_folders"]
