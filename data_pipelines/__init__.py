"""longctx data pipelines.

Pure data code: tokenisation, packing and streaming of training samples. This package
imports neither ``framework``, ``lightning`` nor ``ray``, so it can be used (and tested)
on its own and shipped to data workers without the training stack.

Main entry points:
- ``data_pipelines.tokenizer.load_project_tokenizer()``: the shipped offline tokenizer;
- ``data_pipelines.build_source(spec, tokenizer)``: a map-style source from a data spec;
- ``data_pipelines.loader.RankBatches``: deterministic, resumable per-rank batches.
"""

from data_pipelines.errors import BadRecordError, DataConfigError


def build_source(spec, tokenizer):
    """Build a map-style source from a spec mapping; see :mod:`data_pipelines.factory`."""
    from data_pipelines.factory import build_source as _build

    return _build(spec, tokenizer)


__all__ = ["BadRecordError", "DataConfigError", "build_source"]
