"""The "Data Distribution Matters" context autoencoder as a method (methods.md §4): a trainable
encoder LM compresses each text into k slots, a linear projection maps them into a frozen decoder
LM's embedding space, and the decoder is trained to reproduce the text from them. Compression
quality is reconstruction fidelity (token F1, BLEU, ROUGE-L; ``framework.eval.autoencoder_eval``).

    python recipes/ae_study.py --preset tiny          # pretrains the LMs this method pairs, then trains it

Settings (section ``autoencoder``): ``encoder``: where the encoder LM comes from: ``base`` (the
``model`` section's base: a model id, a directory or ``random:<family>``), or a directory /
``models:/`` / ``runs:/`` URI of a causal LM. ``decoder``: a directory / ``models:/`` / ``runs:/``
URI of the causal LM to freeze (required). Both must read the project's token ids (one tokenizer,
``model.tokenizer``). ``slots``, ``slot_mode``: see ``framework.models.compression.autoencoder``.

URIs are resolved on the Ray worker (a cluster's workers need not see the driver's files) against
``tracking.tracking_uri``, else the store the driver's job runs in.

Trainable set: the encoder (except an untied LM head, which the slots never reach: left frozen so
that data-parallel training sees a gradient for every trained weight), the projection, the memory
tokens and the marker. The decoder gets no gradient.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from framework.config import ConfigError
from framework.job import TrainJob
from framework.methods.lm_module import TokenLossModule
from framework.methods.mlflow_model import TRACKING_DIR, MLflowModel, reconstruction_signature
from framework.methods.registry import MethodSpec
from framework.models.loading import is_autoencoder_dir

ENCODER_FROM_BASE = "base"
URI_PREFIXES = ("models:/", "runs:/")
EXAMPLE_INPUT = "['the house was quiet and the garden was green']"


@dataclass
class AutoencoderSettings:
    """encoder: 'base' or a causal LM's directory / models:/ / runs:/ URI. decoder: the frozen causal LM's
    directory / models:/ / runs:/ URI. slots: k memory slots per text. slot_mode: memory_tokens | group_pool.
    gradient_checkpointing: on the encoder. eval_samples / eval_batch_size: the held-out texts that the
    greedy-reconstruction evaluation scores, and how many it decodes at once."""

    encoder: str = ENCODER_FROM_BASE
    decoder: str = ""
    slots: int = 128
    slot_mode: str = "memory_tokens"
    gradient_checkpointing: bool = False
    eval_samples: int = 64
    eval_batch_size: int = 16

    def __post_init__(self) -> None:
        from framework.models.compression.autoencoder import SLOT_MODES

        if self.slot_mode not in SLOT_MODES:
            raise ConfigError(f"autoencoder.slot_mode={self.slot_mode!r} is not one of {SLOT_MODES}. "
                              "Fix: --autoencoder.slot_mode memory_tokens")
        if isinstance(self.slots, bool) or not isinstance(self.slots, int) or self.slots < 1:
            raise ConfigError(f"autoencoder.slots={self.slots!r} must be a whole number >= 1. "
                              "Fix: e.g. --autoencoder.slots 128 (the study's k, for 512-token texts)")
        for name in ("eval_samples", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"autoencoder.{name}={getattr(self, name)} must be >= 1. Fix: e.g. 16")


@dataclass
class AutoencoderJob(TrainJob):
    """An autoencoder's job: the shared sections plus `autoencoder`."""

    METHOD: ClassVar[str] = "autoencoder"

    autoencoder: AutoencoderSettings = field(default_factory=AutoencoderSettings)


class AutoencoderModule(TokenLossModule):
    """Reconstruction loss: next-token cross entropy of the text from [slots ; marker ; text < t], as the
    global token mean of every method; the optimiser sees ContextAutoencoder.trainable_parameters()."""

    def __init__(self, model, optim, total_steps: int):
        super().__init__(model, optim, total_steps)
        freeze_untied_head(model.encoder)
        trainable = {id(p) for p in model.trainable_parameters()}
        for p in model.parameters():
            if id(p) not in trainable:
                p.requires_grad_(False)

    def loss_sum(self, batch):
        out = self.model(batch["input_ids"], batch.get("attention_mask"))
        return out.loss_sum, out.num_tokens

    def added_parameters(self):
        extra = list(self.model.projection.parameters()) + [self.model.marker]
        return extra + ([self.model.memory] if self.model.memory is not None else [])


def freeze_untied_head(lm) -> None:
    """The slots are read from the encoder's last hidden states, so its LM head is never used in training;
    unless it is tied to the input embeddings, freeze it."""
    head, embed = lm.get_output_embeddings(), lm.get_input_embeddings()
    if head is not None and head.weight is not embed.weight:
        head.requires_grad_(False)


def _tracking_uri(cfg) -> str | None:
    import mlflow

    if cfg.tracking.tracking_uri:
        return cfg.tracking.tracking_uri
    return mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None


def causal_lm_dir(where: str, setting: str, tracking_uri: str | None) -> str:
    """A local directory holding the causal LM that `where` names (downloaded for a models:/ or runs:/ URI)."""
    from framework.eval.model_uri import ModelURIError, resolve_model_dir
    from framework.models.loading import is_autoencoder_dir

    try:
        directory = resolve_model_dir(where, tracking_uri)
    except ModelURIError as err:
        raise ConfigError(f"autoencoder.{setting}={where!r}: {err}") from None
    if is_autoencoder_dir(directory):
        raise ConfigError(f"autoencoder.{setting}={where!r} is an autoencoder, not a causal LM. Fix: point at a "
                          f"causal LM: the autoencoder directory's {setting}/ subfolder, or the model an LM stage "
                          "registered")
    return directory


def build_model(cfg: AutoencoderJob, tokenizer):
    from framework.methods.base_model import build_base_model
    from framework.models.compression.autoencoder import AutoencoderError, ContextAutoencoder
    from framework.models.loading import NotACausalLMError, load_causal_lm

    settings, uri = cfg.autoencoder, _tracking_uri(cfg)
    try:
        decoder = load_causal_lm(causal_lm_dir(settings.decoder, "decoder", uri))
        if settings.encoder == ENCODER_FROM_BASE:
            encoder = build_base_model(cfg.model, vocab_size=len(tokenizer), seed=cfg.launch.seed)
        else:
            encoder = load_causal_lm(causal_lm_dir(settings.encoder, "encoder", uri))
        model = ContextAutoencoder(encoder, decoder, slots=settings.slots, slot_mode=settings.slot_mode,
                                   text_vocab_size=len(tokenizer))
    except (AutoencoderError, NotACausalLMError) as err:
        raise ConfigError(f"autoencoder: {err}") from None
    if settings.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model


def load_model(directory: str):
    from framework.models.compression.autoencoder import ContextAutoencoder

    return ContextAutoencoder.from_pretrained(directory)


def save_model(model, directory: str, tokenizer) -> None:
    """encoder/ and decoder/ (each with the tokenizer), the autoencoder's own weights and config."""
    model.save_pretrained(directory, tokenizer=tokenizer)


def validate(cfg: AutoencoderJob) -> None:
    import os

    from data_pipelines.factory import QA_KINDS

    settings = cfg.autoencoder
    if not settings.decoder:
        raise ConfigError("autoencoder.decoder is empty: the autoencoder needs a frozen decoder LM. Fix: "
                          "--autoencoder.decoder models:/<name>@champion (or a save_pretrained directory); "
                          "recipes/ae_study.py pretrains and pairs them for you")
    for name in ("encoder", "decoder"):
        where = getattr(settings, name)
        if name == "encoder" and where == ENCODER_FROM_BASE:
            continue
        if not where.startswith(URI_PREFIXES) and not os.path.isdir(os.path.expanduser(where)):
            raise ConfigError(f"autoencoder.{name}={where!r}: no such directory, and not a models:/ or runs:/ URI. "
                              f"Fix: a causal LM's save_pretrained directory, models:/<name>@<alias> or runs:/<id>"
                              + (", or 'base' (the model section's base)" if name == "encoder" else ""))
    if cfg.data.kind in QA_KINDS:
        raise ConfigError(f"data.kind={cfg.data.kind!r}: the autoencoder reconstructs plain texts (input_ids), not "
                          "question-answer samples. Fix: --data.kind text (the shipped novels) or entropy_text")
    if settings.slot_mode == "group_pool" and settings.slots > cfg.data.seq_len:
        raise ConfigError(f"autoencoder.slots={settings.slots} exceeds data.seq_len={cfg.data.seq_len}: group_pool "
                          f"needs at least one token per slot. Fix: --autoencoder.slots {cfg.data.seq_len} or fewer")


MLFLOW_MODEL = MLflowModel(
    name="context-autoencoder", pyfunc=TRACKING_DIR / "autoencoder_pyfunc_model.py", signature=reconstruction_signature,
    input_example=lambda n: (["the house was quiet and the garden was green"], {"max_new_tokens": min(n, 4)}),
    example_input=EXAMPLE_INPUT,
    required=("autoencoder.safetensors", "encoder/config.json", "encoder/model.safetensors", "decoder/config.json",
              "decoder/model.safetensors", "encoder/tokenizer.json|encoder/tokenizer_config.json"),
    save_hint="Fix: write it with ContextAutoencoder.save_pretrained(model_dir, tokenizer=tokenizer)")

METHOD = MethodSpec(
    name="autoencoder", job=AutoencoderJob, build_model=build_model, load_model=load_model, save_model=save_model,
    lightning_module=lambda model, cfg, steps: AutoencoderModule(model, cfg.optim, steps),
    validate=validate, recognizes=is_autoencoder_dir, mlflow_model=MLFLOW_MODEL,
)
