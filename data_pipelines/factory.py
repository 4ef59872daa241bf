"""``build_source(spec, tokenizer)``: a map-style source from a plain mapping (YAML/CLI friendly).

A spec is ``{"kind": K, **options}``. Each kind's options are the fields of its dataclass in
:mod:`data_pipelines.options`, each with its type, default (none when required) and a line of help;
``--help-config`` lists them (:func:`describe_options`). The kinds:

- ``passkey`` (``PasskeyOptions``): a key hidden at some depth in filler text (``data_pipelines.synthetic``)
- ``needle`` (``NeedleOptions``): multi-key needles in filler text
- both synthetic kinds also take ``seq_len_schedule``: ``[[start_sample, length], ...]``, a length
  curriculum by global sample position (see ``data_pipelines.schedule``)
- ``store_windows`` (``StoreWindowsOptions``): windows over a token store of ``longctx data prepare``
- ``text`` (``TextOptions``): natural text tokenized in memory (``data_pipelines.text``)
- ``entropy_text`` (``EntropyTextOptions``): generated word sequences of controlled entropy from a seeded
  Markov chain (``data_pipelines.entropy_text``)
- ``chat`` (``ChatOptions``): conversations with a loss mask on the assistant turns (``data_pipelines.chat``)
- ``qa_facts`` (``QAFactsOptions``): synthetic "key: value" fact retrieval (``data_pipelines.qa``)
- ``qa_jsonl`` (``QAJsonlOptions``): RAM/COMI JSONL ``{input, prompt, answer}`` records
- both QA kinds give ``context_ids``/``context_mask`` [seq_len], ``question_ids``/``question_mask`` [question_len],
  ``answer_ids``/``answer_mask`` [answer_len], ``evidence_mask`` [seq_len], ``answer_text`` and ``answers``
  instead of ``input_ids``/``labels`` (see ``data_pipelines.qa``)
- ``poc_labels`` (``PoCLabelsOptions``): PoC's cached (context, ratios, retention) labels
  (``data_pipelines.poc_label_cache``); the last validation_fraction of the contexts is the validation split,
  so held-out contexts are never trained on

For ``store_windows``, ``text``, ``chat`` and ``qa_jsonl``, ``num_samples`` keeps a seeded random subset of that
many windows (it must not exceed the number of windows); ``seed`` picks that subset.

Every kind but the QA kinds also takes ``chunking``: None, or ``{"strategy": "fixed"|"right_aligned"|"random"|
"uniform"|"semantic"|"paper", "chunk_size": int, "seed": int [0], "min_chunk": int [4]}`` (``ChunkingOptions``),
which adds ``chunk_ids`` to every sample.

Invalid specs raise :class:`DataConfigError` naming the key, the rule and the fix, before
any data is read.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from data_pipelines.options import OPTIONS, Options, describe_options, parse_spec

__all__ = ["KINDS", "QA_KINDS", "build_source", "describe_options", "parse_spec", "validate_spec"]

_REQUIRED = dataclasses.MISSING
KINDS: dict[str, dict[str, Any]] = {
    kind: {f.name: f.default for f in dataclasses.fields(cls)} for kind, cls in OPTIONS.items()}
"""Each kind's keys and their defaults (``_REQUIRED`` when the key has none), read off ``OPTIONS``."""
QA_KINDS = ("qa_facts", "qa_jsonl")


def validate_spec(spec: Mapping[str, Any] | Options) -> dict[str, Any]:
    """Check a spec and fill in defaults; returns the complete spec (``chunking`` a dict or None)."""
    return parse_spec(spec).to_spec()


def build_source(spec: Mapping[str, Any] | Options, tokenizer):
    """Build the map-style source described by ``spec``, a mapping (see the module docstring) or its options."""
    options = parse_spec(spec)
    source = options.build(tokenizer)
    schedule = getattr(options, "seq_len_schedule", None)
    if schedule is not None:
        from data_pipelines.schedule import LengthSchedule, check_schedule

        final, seq_len = source, options.seq_len
        pairs = check_schedule(schedule, seq_len)
        source = LengthSchedule(lambda n: final if n == seq_len else options.at_length(n).build(tokenizer), pairs)
    chunking = getattr(options, "chunking", None)
    if chunking is not None:
        from data_pipelines.chunking import ChunkedSource

        source = ChunkedSource(source, chunk_size=chunking.chunk_size, strategy=chunking.strategy, seed=chunking.seed,
                               tokenizer=tokenizer, min_chunk=chunking.min_chunk)
    return source
