"""SWAT decoder, base model and causal LM as Hugging Face `PreTrainedModel`s.

Architecture: token embedding -> L x [x + Attn(RMSNorm(x)); x + SwiGLU(RMSNorm(x))] -> RMSNorm ->
LM head. The attention is SWAT's banded sigmoid attention (see `attention.py`).

Decoding cache. Because no query ever looks further back than `window - 1` positions, a layer only
needs the keys/values of the last `window - 1` tokens. `SWATConfig.sliding_window` aliases
`window`, so `DynamicCache(config=model.config)` (which `generate` builds by default) holds one
`transformers.cache_utils.DynamicSlidingWindowLayer` per layer: it returns cached + new keys to
the attention and then keeps only the last `window - 1` of them. Decoding memory is therefore
constant, while `cache.get_seq_length()` keeps counting all tokens seen, which gives the absolute
position used for RoPE. A plain full `DynamicCache()` also works (it just keeps growing).

Padding. A 2D `attention_mask` (1 = real token, 0 = padding) covering past + new tokens removes
padded keys from every window. With left padding this gives real tokens exactly the keys they would
have without padding (the band is counted in positions of the padded row, and padding sits before
all real tokens), so left-padded batch generation works. Right padding is harmless for the real
tokens too (causality). Packed documents are *not* separated: a window may cross a document
boundary. `position_ids` move only the RoPE angles; the linear bias and the band always use
distances between positions in the row.

Limits: only `DynamicCache` (rolling or full) is accepted, static caches are rejected with a clear
error; `output_attentions` is not supported (no attention maps are returned); 4D masks are rejected.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.utils.generic import can_return_tuple

from .attention import apply_rope, banded_attention, rope_cos_sin, swat_slopes
from .configuration import SWATConfig


class SWATRMSNorm(nn.Module):
    """RMSNorm with a learned scale, computed in float32."""

    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.to(torch.promote_types(dtype, torch.float32))
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class SWATMLP(nn.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: SWATConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


class SWATAttention(nn.Module):
    """Multi-head SWAT attention: projections, RoPE, cache update, banded attention, output projection."""

    def __init__(self, config: SWATConfig, layer_idx: int):
        super().__init__()
        self.config, self.layer_idx = config, layer_idx
        self.num_heads, self.head_dim = config.num_attention_heads, config.head_dim
        size = config.hidden_size
        self.q_proj = nn.Linear(size, size, bias=False)
        self.k_proj = nn.Linear(size, size, bias=False)
        self.v_proj = nn.Linear(size, size, bias=False)
        self.o_proj = nn.Linear(size, size, bias=False)
        self._slopes: dict[torch.device, torch.Tensor] = {}  # per-device copy of swat_slopes (not a weight)

    def slopes(self, device: torch.device) -> torch.Tensor:
        if device not in self._slopes:
            self._slopes[device] = swat_slopes(self.num_heads, self.config.slopes).to(device)
        return self._slopes[device]

    def forward(
        self,
        hidden_states: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        attention_mask: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        past_length: int = 0,
    ) -> torch.Tensor:
        batch, length, _ = hidden_states.shape
        shape = (batch, length, self.num_heads, self.head_dim)
        q = self.q_proj(hidden_states).view(shape).transpose(1, 2)
        k = self.k_proj(hidden_states).view(shape).transpose(1, 2)
        v = self.v_proj(hidden_states).view(shape).transpose(1, 2)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        window = self.config.window
        if past_key_values is not None:
            k, v = past_key_values.update(k, v, self.layer_idx)
            needed = min(past_length, window - 1) + length
            if k.shape[-2] < needed:
                raise ValueError(
                    f"layer {self.layer_idx}: the cache returned {k.shape[-2]} keys but the window needs {needed} "
                    f"(window={window}); its sliding window is smaller than SWATConfig.window. "
                    "Fix: use DynamicCache(config=model.config) or a plain DynamicCache()."
                )
        key_mask = None if attention_mask is None else attention_mask[:, -k.shape[-2]:]
        out = banded_attention(q, k, v, self.slopes(q.device), window, self.config.normalization,
                               self.config.query_block_size, key_mask)
        return self.o_proj(out.transpose(1, 2).reshape(batch, length, -1))


class SWATDecoderLayer(GradientCheckpointingLayer):
    """Pre-norm block: x + Attn(RMSNorm(x)), then x + SwiGLU(RMSNorm(x))."""

    def __init__(self, config: SWATConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = SWATRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = SWATAttention(config, layer_idx)
        self.post_attention_layernorm = SWATRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = SWATMLP(config)

    def forward(self, hidden_states, rope=None, attention_mask=None, past_key_values=None, past_length=0,
                **kwargs) -> torch.Tensor:
        hidden_states = hidden_states + self.self_attn(self.input_layernorm(hidden_states), rope, attention_mask,
                                                       past_key_values, past_length)
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))


class SWATPreTrainedModel(PreTrainedModel):
    """Shared Hugging Face plumbing: config class, weight init (normal(0, initializer_range) for
    linear and embedding weights, ones for RMSNorm), gradient checkpointing of decoder layers."""

    config_class = SWATConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["SWATDecoderLayer"]
    _skip_keys_device_placement = ["past_key_values"]


class SWATModel(SWATPreTrainedModel):
    """The SWAT decoder stack without the LM head; returns the final-normed hidden states."""

    def __init__(self, config: SWATConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList(SWATDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = SWATRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        cache_position: torch.LongTensor | None = None,
        output_hidden_states: bool | None = None,
        cache: Cache | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        """Run the decoder. `attention_mask` is 2D (batch, past + new tokens), 1 = real token;
        `position_ids`/`cache_position` only set RoPE positions (default: tokens seen so far + arange).
        `use_cache` defaults to config.use_cache in eval mode and to False in training mode."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("SWATModel needs exactly one of input_ids or inputs_embeds. Fix: pass one of them.")
        past_key_values = cache if cache is not None else past_key_values
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        batch, length = inputs_embeds.shape[:2]
        if use_cache is None:
            use_cache = self.config.use_cache and not self.training
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=self.config)
        if past_key_values is not None and not isinstance(past_key_values, DynamicCache):
            raise TypeError(
                f"SWAT supports DynamicCache only, got {type(past_key_values).__name__} (static caches keep keys in "
                "a rolled order the banded attention does not expect). Fix: pass DynamicCache(config=model.config) "
                "or let generate build it (no cache_implementation)."
            )
        past_length = past_key_values.get_seq_length() if past_key_values is not None else 0
        attention_mask = _key_padding_mask(attention_mask, batch, past_length + length)

        hidden_states = inputs_embeds
        rope = None
        if self.config.rope:
            if position_ids is None:
                start = int(cache_position[0]) if cache_position is not None else past_length
                position_ids = torch.arange(start, start + length, device=hidden_states.device)
            rope = rope_cos_sin(position_ids, self.config.head_dim, self.config.rope_theta, hidden_states.dtype)

        all_hidden = [] if output_hidden_states else None
        for layer in self.layers:
            if all_hidden is not None:
                all_hidden.append(hidden_states)
            hidden_states = layer(hidden_states, rope=rope, attention_mask=attention_mask,
                                  past_key_values=past_key_values, past_length=past_length)
        hidden_states = self.norm(hidden_states)
        if all_hidden is not None:
            all_hidden.append(hidden_states)
        return BaseModelOutputWithPast(
            last_hidden_state=hidden_states,
            hidden_states=tuple(all_hidden) if all_hidden is not None else None,
            **_cache_field(BaseModelOutputWithPast, past_key_values if use_cache else None),
        )


class SWATForCausalLM(SWATPreTrainedModel, GenerationMixin):
    """SWAT decoder + LM head. `model(input_ids=ids, labels=ids)` gives the usual shifted next-token
    cross-entropy (-100 labels ignored); `generate` decodes with a rolling window cache."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: SWATConfig):
        super().__init__(config)
        self.model = SWATModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        cache_position: torch.LongTensor | None = None,
        output_hidden_states: bool | None = None,
        cache: Cache | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """logits_to_keep: an int k > 0 computes logits for the last k positions only; a 1D tensor
        selects positions. Extra kwargs (e.g. num_items_in_batch) go to the loss function."""
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=cache if cache is not None else past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            cache_position=cache_position,
            output_hidden_states=output_hidden_states,
        )
        hidden_states = outputs.last_hidden_state
        if isinstance(logits_to_keep, int):
            keep = slice(-logits_to_keep, None) if logits_to_keep > 0 else slice(None)
        else:
            keep = logits_to_keep
        logits = self.lm_head(hidden_states[:, keep, :])
        loss = None
        if labels is not None:
            loss_kwargs = {k: v for k, v in kwargs.items()
                           if k in ("num_items_in_batch", "ignore_index", "shift_labels")}
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **loss_kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                                      **_cache_field(CausalLMOutputWithPast, _output_cache(outputs)))


def _cache_field(output_cls, cache) -> dict:
    """The KV cache under the field name of this transformers version's outputs (`cache`, formerly
    `past_key_values`)."""
    return {"cache" if "cache" in output_cls.__dataclass_fields__ else "past_key_values": cache}


def _output_cache(outputs):
    return getattr(outputs, "cache", None) if "cache" in type(outputs).__dataclass_fields__ \
        else outputs.past_key_values


def _key_padding_mask(attention_mask: torch.Tensor | None, batch: int, total: int) -> torch.Tensor | None:
    """Check a 2D padding mask over past + new tokens and turn it into bool; None when all real."""
    if attention_mask is None:
        return None
    if attention_mask.ndim != 2 or tuple(attention_mask.shape) != (batch, total):
        raise ValueError(
            f"SWAT expects a 2D attention_mask of shape (batch, past + new tokens) = ({batch}, {total}), got "
            f"{tuple(attention_mask.shape)}. Fix: pass the 1/0 padding mask of the whole sequence so far "
            "(4D masks are not supported; the band and causality are built in)."
        )
    mask = attention_mask.bool()
    return None if bool(mask.all()) else mask


def register_auto_classes() -> None:
    """Make AutoConfig / AutoModel / AutoModelForCausalLM know "swat"; safe to call more than once."""
    AutoConfig.register("swat", SWATConfig, exist_ok=True)
    AutoModel.register(SWATConfig, SWATModel, exist_ok=True)
    AutoModelForCausalLM.register(SWATConfig, SWATForCausalLM, exist_ok=True)
