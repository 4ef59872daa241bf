"""One streamer for every model the evaluations read: a CoMeT model, or a transformers causal LM with full or
sliding-window attention on a KV cache.

    stream = open_stream(model)                  # CoMeT: model.stream(); any other causal LM: KVCacheStream
    logits = stream.feed(prompt, logits="last")  # (B, 1, V); then feed one token at a time to decode
    KVCacheLM(hf_model).stream()                 # a transformers LM behind the interface passkey streams through
    read_document(model, ids, piece_len, "full", score)   # score(logits, start, end) piece by piece

``feed`` is ``CoMeTStream.feed``: append (B, n) token ids and get the next-token logits ("last") or nothing
(None). A CoMeT model keeps its memory between feeds; a transformers LM keeps its KV cache (a sliding-window
model's cache layers keep only the window). ``block`` feeds each piece in blocks of that many tokens, so a
sliding-window model never builds a mask wider than its window.

passkey (the greedy answer after a haystack), perplexity (the NLL of every token of a document) and
``longctx bench efficiency`` (prefill and decode timings) read models through this module only.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Callable


def is_comet(model) -> bool:
    from framework.models.comet import CoMeTForCausalLM

    return isinstance(model, CoMeTForCausalLM)


class KVCacheStream:
    """The ``feed`` of ``CoMeTStream`` for a transformers causal LM: each feed extends one KV cache.

    block: None feeds each piece in one forward; else in blocks of that many tokens (a sliding window's:
    the blocked prefill gives the one-pass prefill's logits with masks no wider than the window). Only the
    last position's logits are computed (``logits_to_keep=1``)."""

    def __init__(self, model, block: int | None = None):
        from framework.models.hf_compat import cache_keyword

        self.model, self.block, self.cache = model, block, None
        self.cache_key = cache_keyword(model)

    def feed(self, input_ids, logits: str | None = "last"):
        import torch

        if logits not in ("last", None):
            raise ValueError(f"logits={logits!r}: a KV-cache stream only decodes ('last' or None)")
        block = self.block or input_ids.shape[1]
        with torch.no_grad():  # as CoMeTStream.feed
            for start in range(0, input_ids.shape[1], block):
                kwargs = {} if self.cache is None else {self.cache_key: self.cache}
                out = self.model(input_ids=input_ids[:, start:start + block], use_cache=True, logits_to_keep=1,
                                 **kwargs)
                self.cache = out.past_key_values
        return out.logits if logits == "last" else None


def open_stream(model, block: int | None = None):
    """A fresh stream of `model`: its own for a CoMeT model, else a `KVCacheStream` (blocks of `block` tokens)."""
    return model.stream() if is_comet(model) else KVCacheStream(model, block)


class KVCacheLM:
    """A transformers causal LM (e.g. the base a CoMeT model was fine-tuned from, or a sliding-window model)
    seen through the interface of a CoMeT model that passkey streams through (``stream()``, ``parameters()``,
    ``config.chunk_size``), so both models answer the very same haystacks.

    ``config.chunk_size`` is ``prefill_tokens``, larger than any haystack by default, so the whole prompt goes
    through one forward with ``use_cache=True``, keeping only the last position's logits; the answer is then
    decoded greedily on the KV cache. Memory grows with the length (the KV cache and, without a
    memory-efficient kernel, the attention scores): the caller decides which lengths fit.
    """

    def __init__(self, model, prefill_tokens: int = 1 << 40):
        self.model = model.eval()
        self.config = SimpleNamespace(chunk_size=prefill_tokens)  # the feed size of evaluate_passkey

    def parameters(self):
        return self.model.parameters()

    def stream(self) -> KVCacheStream:
        return KVCacheStream(self.model)


ATTENTION = ("stream", "full", "window")


def read_document(model, input_ids, piece_len: int, attention: str, score: Callable) -> None:
    """Read (B, L) documents and call ``score(logits, start, end)`` for each piece: the logits of positions
    start .. end-1, which predict tokens start+1 .. end (the last token predicts nothing and is never fed).

    attention:
      "stream"  the model's own stream (``model.stream()``: a CoMeT model) fed `piece_len` tokens at a time, all logits
                of a piece kept: memory stays flat whatever L is.
      "full"    a transformers causal LM: one full-attention forward over the documents, then the LM head over
                `piece_len` positions of the final hidden states at a time (all L x vocabulary logits at once
                would not fit at long lengths).
      "window"  a transformers causal LM reading each window of `piece_len` tokens alone (no cache): window k
                scores tokens k*piece_len+1 .. (k+1)*piece_len, so the first token of window k+1 is predicted by
                the last position of window k.
    Only one piece's logits exist at any time.
    """
    import torch

    if attention not in ATTENTION:
        raise ValueError(f"attention={attention!r}: use one of {ATTENTION}")
    length = input_ids.shape[1]
    pieces = [(start, min(start + piece_len, length - 1)) for start in range(0, length - 1, piece_len)]
    if attention == "stream":
        stream = model.stream()
        with torch.no_grad():
            for start, end in pieces:
                score(stream.feed(input_ids[:, start:end], logits="all"), start, end)
    elif attention == "full":
        with torch.inference_mode():
            hidden = model.base_model(input_ids=input_ids[:, :-1]).last_hidden_state
            head = model.get_output_embeddings()
            for start, end in pieces:
                score(head(hidden[:, start:end]), start, end)
    else:
        with torch.inference_mode():
            for start, end in pieces:
                score(model(input_ids=input_ids[:, start:end], use_cache=False).logits, start, end)
