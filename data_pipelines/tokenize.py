"""Batched tokenization with Hugging Face fast tokenizers.

``encode_batch_fast`` of the Rust backend splits a batch over all cores (Rayon threads)
and releases the GIL, so a background thread can tokenize one batch while the main thread
parses the next. Set ``TOKENIZERS_PARALLELISM=false`` to use a single core.
"""

from __future__ import annotations

import hashlib
import os
from typing import Sequence

import numpy as np

from data_pipelines.corpus import tokenizer_fingerprint
from data_pipelines.errors import DataConfigError


def describe_tokenizer(tokenizer) -> dict:
    """What the manifest records about a tokenizer; ``fingerprint`` covers its full serialisation."""
    from data_pipelines.tokenizer import PROJECT_TOKENIZER_NAME, project_tokenizer_dir

    template = getattr(tokenizer, "chat_template", None)
    name = str(getattr(tokenizer, "name_or_path", "") or "")
    if os.path.abspath(name) == os.path.abspath(project_tokenizer_dir()):
        name = PROJECT_TOKENIZER_NAME  # portable: resolves to the shipped tokenizer on any machine
    return {
        "name_or_path": name,
        "class": type(tokenizer).__name__,
        "fingerprint": tokenizer_fingerprint(tokenizer),
        "vocab_size": len(tokenizer),
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "chat_template_sha256": hashlib.sha256(template.encode()).hexdigest() if isinstance(template, str) else None,
    }


def require_fast(tokenizer) -> None:
    if getattr(tokenizer, "backend_tokenizer", None) is None:
        raise DataConfigError(
            f"tokenizer {type(tokenizer).__name__} is not a fast (Rust) tokenizer: batched tokenization needs one. "
            "Load it with AutoTokenizer.from_pretrained(name, use_fast=True), or use the project tokenizer."
        )


def encode_texts(tokenizer, texts: Sequence[str], dtype) -> list[np.ndarray]:
    """Token ids of each text (no special tokens added)."""
    backend = tokenizer.backend_tokenizer
    encode = getattr(backend, "encode_batch_fast", None) or backend.encode_batch
    return [np.array(enc.ids, dtype=dtype) for enc in encode(list(texts), add_special_tokens=False)]


def encode_chats(tokenizer, conversations: Sequence[list], dtype) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(ids, loss_mask)`` per conversation: the chat template applied, loss on assistant turns only."""
    if not getattr(tokenizer, "chat_template", None):
        raise DataConfigError(
            f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no chat template: chat data needs one "
            "(with {% generation %} markers for answer-only labels). Use the project tokenizer or set tokenizer.chat_template."
        )
    out = tokenizer.apply_chat_template(
        list(conversations), tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    result = []
    for ids, mask in zip(out["input_ids"], out["assistant_masks"]):
        result.append((np.array(ids, dtype=dtype), np.array(mask, dtype=np.uint8)))
    if result and not any(m.any() for _, m in result):
        raise DataConfigError(
            "the tokenizer's chat template marks no assistant tokens, so every label would be -100: its template needs "
            "{% generation %}...{% endgeneration %} around assistant content. Use the project tokenizer, or add the markers."
        )
    return result
