"""Windows of natural text, tokenized in memory: the shipped novels by default, or any small corpus.

    {"kind": "text", "seq_len": 512}                                   # the shipped Austen novels
    {"kind": "text", "seq_len": 512, "path": "s3://b/books/*.jsonl.gz", "split": "validation"}

Documents are tokenized once per process and joined by the end-of-text token into one stream; the
last ``validation_fraction`` of the stream is the ``validation`` split, the rest ``train``, so the
two never share a token. Each split is cut into consecutive ``seq_len`` windows (``concat`` packing).
Every format of :mod:`data_pipelines.sources` is read (JSON Lines, Parquet, plain text, compressed,
any fsspec URI). The whole corpus is held in memory as int32 tokens, so this kind suits corpora up
to a few hundred million tokens; prepare larger ones with ``longctx data prepare`` and read them
with the ``store_windows`` kind.
"""

from __future__ import annotations

import re
import threading

import numpy as np
import torch

from data_pipelines.errors import BadRecordError, DataConfigError, require
from data_pipelines.windows import concat_windows, document_ids

SPLITS = ("train", "validation", "all")
_CACHE: dict[tuple, np.ndarray] = {}
_LOCK = threading.Lock()


def _documents(path, field: str, storage_options: dict | None):
    if path is None:
        from data_pipelines.corpus import shipped_documents

        for doc in shipped_documents():
            yield doc["text"]
        return
    from data_pipelines.sources import Bad, expand_sources, read_source

    for src in expand_sources(path, storage_options=storage_options):
        parts = []
        for event in read_source(src, field=field):
            if isinstance(event, Bad):
                raise BadRecordError(src.uri, event.line, event.reason, event.detail)
            parts.append(event.text)
            if event.last:
                yield "".join(parts)
                parts = []


def corpus_tokens(tokenizer, path=None, field: str = "text", storage_options: dict | None = None):
    """(tokens, document start offsets) of the corpus; each document ends with the end-of-text token."""
    from data_pipelines.corpus import tokenizer_fingerprint

    key = (tokenizer_fingerprint(tokenizer), repr(path), field, repr(storage_options))
    with _LOCK:
        if key not in _CACHE:
            eos = tokenizer.eos_token_id
            require(eos is not None, f"the tokenizer {getattr(tokenizer, 'name_or_path', '?')!r} has no end-of-text "
                                     "token to separate documents. Set tokenizer.eos_token first.")
            pieces, starts, at = [], [], 0
            for text in _documents(path, field, storage_options):
                paragraphs = [p for p in re.split(r"(?<=\n\n)(?=\S)", text) if p] or [text]  # keeps every character
                ids = np.concatenate([np.asarray(x, dtype=np.int32) for x in
                                      tokenizer(paragraphs, add_special_tokens=False)["input_ids"]] + [[eos]])
                pieces.append(ids)
                starts.append(at)
                at += len(ids)
            require(pieces, f"data spec kind='text' path={path!r} holds no documents.")
            tokens = np.concatenate(pieces)
            tokens.setflags(write=False)
            _CACHE[key] = (tokens, np.asarray(starts, dtype=np.int64))
        return _CACHE[key]


class TextWindows:
    """Map-style source of ``seq_len``-token windows of one split of a text corpus.

    ``tw[i]`` -> ``{"input_ids", "labels", "document_ids"}``, LongTensors of ``seq_len``.
    """

    def __init__(self, tokenizer, seq_len: int, path=None, field: str = "text", split: str = "train",
                 validation_fraction: float = 0.05, num_samples: int | None = None, seed: int = 0,
                 storage_options: dict | None = None):
        require(split in SPLITS, f"split={split!r} is unknown: use one of {', '.join(SPLITS)}.")
        require(isinstance(validation_fraction, (int, float)) and 0 < validation_fraction < 1,
                f"validation_fraction={validation_fraction!r} must be in (0, 1), e.g. 0.05.")
        tokens, self._doc_starts = corpus_tokens(tokenizer, path, field, storage_options)
        cut = int(len(tokens) * (1 - validation_fraction))
        self.offset, end = {"train": (0, cut), "validation": (cut, len(tokens)), "all": (0, len(tokens))}[split]
        self.tokens, self.seq_len = tokens, seq_len
        self.starts, _ = concat_windows(end - self.offset, seq_len)
        self.starts = self.starts + self.offset
        if len(self.starts) == 0:
            raise DataConfigError(f"the {split} split of {path or 'the shipped novels'} has {end - self.offset} tokens: "
                                  f"not one window of seq_len={seq_len}. Use a smaller seq_len or more text.")
        if num_samples is not None:
            require(isinstance(num_samples, int) and 0 < num_samples <= len(self.starts),
                    f"num_samples={num_samples!r} must be in [1, {len(self.starts)}]: the {split} split gives "
                    f"{len(self.starts)} windows of seq_len={seq_len}. Leave num_samples unset to use them all.")
            keep = np.sort(np.random.default_rng([int(seed), 0x7E57]).choice(len(self.starts), num_samples, replace=False))
            self.starts = self.starts[keep]

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        i = int(i)
        if not -len(self) <= i < len(self):
            raise IndexError(f"window {i} is out of range for {len(self)} windows")
        start = int(self.starts[i])
        ids = torch.from_numpy(self.tokens[start:start + self.seq_len].astype(np.int64))
        docs = document_ids(self._doc_starts, start, self.seq_len, self.seq_len)
        return {"input_ids": ids, "labels": ids.clone(), "document_ids": torch.from_numpy(docs)}
