"""CoMeT's transformers config: its own `model_type`, the backbone's config inside it, CoMeT's fields beside.

A saved CoMeT folder's `config.json` says `"model_type": "longctx_comet"`, so `AutoModelForCausalLM` (after
`import framework`, which registers the type) loads CoMeT, and without the registration it fails loudly instead
of returning the bare backbone. The backbone's own config travels as the `backbone` dict; CoMeT's fields (a
`CoMeTConfig`) as the `comet` dict. Reading or setting a CoMeT field on this config (`config.chunk_size`) reads or
sets the `CoMeTConfig` the model runs with (`config.comet_config`), so the two never disagree.
"""

from __future__ import annotations

import dataclasses

from transformers import AutoConfig, PretrainedConfig

from .config import CoMeTConfig

MODEL_TYPE = "longctx_comet"
UNBOUNDED_CONTEXT = 1 << 20  # what `max_position_embeddings` reports: chunk-local positions never grow with length
_COMET_FIELDS = frozenset(f.name for f in dataclasses.fields(CoMeTConfig))
_MIRRORED = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "bos_token_id",
             "eos_token_id", "pad_token_id", "tie_word_embeddings")


class CoMeTHFConfig(PretrainedConfig):
    model_type = MODEL_TYPE
    has_no_defaults_at_init = True

    def __init__(self, backbone: dict | None = None, comet: dict | CoMeTConfig | None = None,
                 max_position_embeddings: int = UNBOUNDED_CONTEXT, **kwargs):
        backbone = dict(backbone or {})
        for name in _MIRRORED:  # what tools read from the top-level config (vocabulary, special tokens, sizes)
            if name in backbone and backbone[name] is not None:
                kwargs.setdefault(name, backbone[name])
        comet = comet if isinstance(comet, CoMeTConfig) else CoMeTConfig.from_dict(dict(comet or {}))
        object.__setattr__(self, "_comet", comet)
        self.backbone = backbone
        self.max_position_embeddings = max_position_embeddings
        super().__init__(**kwargs)

    @classmethod
    def from_parts(cls, backbone_config, comet: CoMeTConfig) -> "CoMeTHFConfig":
        return cls(backbone=backbone_config.to_dict(), comet=comet)

    @property
    def comet_config(self) -> CoMeTConfig:
        return self.__dict__["_comet"]

    @property
    def backbone_config(self):
        """The backbone's transformers config, rebuilt from the `backbone` dict."""
        data = dict(self.backbone)
        kind = data.pop("model_type", None)
        if kind is None:
            raise ValueError("this CoMeT config has no backbone model_type. Fix: save the model with "
                             "CoMeTForCausalLM.save_pretrained, which writes the backbone's config inside config.json")
        return AutoConfig.for_model(kind, **data)

    def __getattr__(self, name):  # only reached when normal lookup fails: CoMeT's fields and properties
        comet = self.__dict__.get("_comet")
        if comet is not None and not name.startswith("_") and hasattr(comet, name):
            return getattr(comet, name)
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def __setattr__(self, name, value):
        if name in _COMET_FIELDS and "_comet" in self.__dict__:
            setattr(self.__dict__["_comet"], name, value)
            return
        super().__setattr__(name, value)

    def to_dict(self) -> dict:
        out = super().to_dict()
        out.pop("_comet", None)
        out["comet"] = self.comet_config.to_dict()
        return out
