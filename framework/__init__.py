"""longctx: long-context language-model training on PyTorch Lightning, Ray Train and MLflow.

Subpackages:
    framework.models   model code (CoMeT and friends), plain PyTorch + transformers
    framework.cli      the ``longctx`` command-line entry point
"""

__version__ = "0.1.0"
