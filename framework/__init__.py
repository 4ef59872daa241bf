"""longctx: long-context language-model training on PyTorch Lightning, Ray Train and MLflow.

Subpackages:
    framework.models   model code (CoMeT and friends), plain PyTorch + transformers
    framework.cli      the ``longctx`` command-line entry point
"""

__version__ = "0.1.0"


def _register_model_types() -> None:
    """CoMeT's transformers model type, so `AutoModelForCausalLM.from_pretrained` on a saved CoMeT folder gives
    CoMeT after `import framework`."""
    from .models import comet  # noqa: F401  (registers on import)


_register_model_types()
