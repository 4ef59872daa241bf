"""longctx data pipelines.

Pure data code: tokenisation, packing and streaming of training samples. This package
imports neither ``framework``, ``lightning`` nor ``ray``, so it can be used (and tested)
on its own and shipped to data workers without the training stack.
"""
