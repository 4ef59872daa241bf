"""Chat-format samples with answer-only labels.

Conversations (``{"messages": [{"role": ..., "content": ...}, ...]}`` per record, in JSONL,
Parquet or a saved ``datasets`` folder, on any fsspec filesystem) are rendered with the
tokenizer's chat template. Only tokens inside assistant turns carry loss: the template's
``{% generation %}`` markers give the mask (the project tokenizer's ChatML template has
them). Conversations are prepared once into a token store with a loss-mask shard (cached
under ``$LONGCTX_CACHE``, default ``~/.cache/longctx``, and reused while the inputs are
unchanged; when all ranks build the source at once, the first one on a node builds the store
and the others wait for it, see ``build_lock.py``), then packed into windows like any store:
``packing="aligned"`` (default) starts a conversation at a window start whenever it fits and pads the rest; a conversation longer
than ``seq_len`` is cut into consecutive windows.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Sequence

import fsspec

from data_pipelines.corpus import tokenizer_fingerprint
from data_pipelines.errors import require
from data_pipelines.prepare import prepare
from data_pipelines.store import MANIFEST, TokenStore
from data_pipelines.windows import StoreWindows


def _cache_dir() -> Path:
    return Path(os.environ.get("LONGCTX_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "longctx")))


class ChatSource(StoreWindows):
    """``ChatSource(path_or_conversations, tokenizer, seq_len)``; samples as in :class:`StoreWindows`.

    ``path`` may be a chat token store made by ``longctx data prepare --chat``, one or more
    source URIs, or a list of conversations (each a list of messages, or a dict with
    ``field``).
    """

    def __init__(self, path, tokenizer, seq_len: int, packing: str = "aligned", field: str = "messages",
                 on_bad_record: str = "fail", storage_options: dict | None = None, num_samples: int | None = None,
                 seed: int = 0):
        require(path is not None and path != [], "ChatSource needs path=: a chat store, source URIs, or a list of conversations.")
        store_path = self._store_for(path, tokenizer, field, on_bad_record, storage_options)
        store = TokenStore(store_path, storage_options if store_path == path else None)
        require(store.has_mask, f"{store_path!r} is a text store without a loss mask: build chat stores with "
                                "`longctx data prepare --chat` (or pass the conversation files themselves).")
        super().__init__(store, seq_len, packing, pad_token_id=tokenizer.pad_token_id, num_samples=num_samples, seed=seed)

    @staticmethod
    def _store_for(path, tokenizer, field, on_bad_record, storage_options) -> str:
        if isinstance(path, str):
            fs, root = fsspec.core.url_to_fs(path, **(storage_options or {}))
            if fs.exists(f"{root.rstrip('/')}/{MANIFEST}"):
                return path
            uris: Sequence[str] = [path]
        elif isinstance(path, (list, tuple)) and path and all(isinstance(p, str) for p in path):
            uris = list(path)
        else:
            conversations = list(path)
            payload = "\n".join(json.dumps(c if isinstance(c, dict) else {field: c}, sort_keys=True) for c in conversations)
            digest = hashlib.sha256(payload.encode()).hexdigest()[:24]
            jsonl = _cache_dir() / "chat-inline" / f"{digest}.jsonl"
            jsonl.parent.mkdir(parents=True, exist_ok=True)
            if not jsonl.exists():
                tmp = jsonl.with_suffix(".tmp")
                tmp.write_text(payload + "\n", encoding="utf-8")
                os.replace(tmp, jsonl)
            uris = [str(jsonl)]
        key = hashlib.sha256(json.dumps([list(uris), field, on_bad_record, tokenizer_fingerprint(tokenizer)]).encode()).hexdigest()[:24]
        out = _cache_dir() / "chat-stores" / key
        prepare(list(uris), str(out), tokenizer, field=field, chat=True, on_bad_record=on_bad_record,
                progress=False, overwrite=True, storage_options=storage_options)
        return str(out)
