"""``build_source(spec, tokenizer)``: a map-style source from a plain mapping (YAML/CLI friendly).

Kinds and their keys (defaults in brackets):

- ``passkey``: seq_len, num_samples [10000], seed [0], digits [5], depth [None], filler [None], label_needle [False],
  filler_start ["sentence"; "token" starts the filler at any token], edge_depth_prob [0.0: the chance that a random
  depth is exactly 0 or 1]
- ``needle``: seq_len, num_samples [10000], seed [0], num_needles [4], num_queries [1], digits [7], filler [None]
- both synthetic kinds also take ``seq_len_schedule`` [None]: ``[[start_sample, length], ...]``, a length
  curriculum by global sample position (see ``data_pipelines.schedule``)
- ``store_windows``: path, seq_len, packing ["concat"], num_samples [None: all windows], seed [0], storage_options [None]
- ``text``: seq_len, path [None: the shipped novels], field ["text"], split ["train"|"validation"|"all"],
  validation_fraction [0.05], num_samples [None], seed [0], storage_options [None]: natural text tokenized
  in memory (``data_pipelines.text``)
- ``entropy_text``: seq_len, num_samples [10000], seed [0], words [64], temperature [1.0: a number, or [lo, hi] drawn
  per sample], chain_seed [0]: generated word sequences of controlled entropy from a seeded Markov chain
  (``data_pipelines.entropy_text``)
- ``chat``: path, seq_len, packing ["aligned"], field ["messages"], on_bad_record ["fail"], num_samples [None], seed [0],
  storage_options [None]
- ``qa_facts``: seq_len (context tokens), num_samples [10000], seed [0], question_len [32], answer_len [12], digits [5],
  keys [None: built-in single-token words], distractors [0], min_seq_len [None: every context fills seq_len; else
  each fills a length drawn from [min_seq_len, seq_len]]: synthetic "key: value" fact retrieval (``data_pipelines.qa``)
- ``qa_jsonl``: path, seq_len (context tokens), question_len [64], answer_len [32], on_bad_record ["fail"],
  num_samples [None], seed [0], storage_options [None]: RAM/COMI JSONL ``{input, prompt, answer}`` records
- both QA kinds give ``context_ids``/``context_mask`` [seq_len], ``question_ids``/``question_mask`` [question_len],
  ``answer_ids``/``answer_mask`` [answer_len], ``evidence_mask`` [seq_len], ``answer_text`` and ``answers``
  instead of ``input_ids``/``labels`` (see ``data_pipelines.qa``)

- ``poc_labels``: path, seq_len, split ["train"|"validation"|"all"], validation_fraction [0.1], num_samples [None],
  seed [0], storage_options [None]: PoC's cached (context, ratios, retention) labels (``data_pipelines.poc_labels``);
  the last validation_fraction of the contexts is the validation split, so held-out contexts are never trained on

For ``store_windows``, ``text``, ``chat`` and ``qa_jsonl``, ``num_samples`` keeps a seeded random subset of that
many windows (it must not exceed the number of windows); ``seed`` picks that subset.

Every kind but the QA kinds also takes ``chunking``: None, or ``{"strategy": "fixed"|"right_aligned"|"random"|
"uniform"|"semantic"|"paper", "chunk_size": int, "seed": int [0], "min_chunk": int [4]}``,
which adds ``chunk_ids`` to every sample.

Invalid specs raise :class:`DataConfigError` naming the key, the rule and the fix, before
any data is read.
"""

from __future__ import annotations

import difflib
from typing import Any, Mapping

from data_pipelines.errors import DataConfigError

_REQUIRED = object()
KINDS: dict[str, dict[str, Any]] = {
    "passkey": {"seq_len": _REQUIRED, "num_samples": 10_000, "seed": 0, "digits": 5, "depth": None, "filler": None,
                "label_needle": False, "filler_start": "sentence", "edge_depth_prob": 0.0, "seq_len_schedule": None},
    "needle": {"seq_len": _REQUIRED, "num_samples": 10_000, "seed": 0, "num_needles": 4, "num_queries": 1, "digits": 7,
               "filler": None, "seq_len_schedule": None},
    "store_windows": {"path": _REQUIRED, "seq_len": _REQUIRED, "packing": "concat", "num_samples": None, "seed": 0,
                      "storage_options": None},
    "text": {"seq_len": _REQUIRED, "path": None, "field": "text", "split": "train", "validation_fraction": 0.05,
             "num_samples": None, "seed": 0, "storage_options": None},
    "entropy_text": {"seq_len": _REQUIRED, "num_samples": 10_000, "seed": 0, "words": 64, "temperature": 1.0,
                     "chain_seed": 0},
    "chat": {"path": _REQUIRED, "seq_len": _REQUIRED, "packing": "aligned", "field": "messages", "on_bad_record": "fail",
             "num_samples": None, "seed": 0, "storage_options": None},
    "qa_facts": {"seq_len": _REQUIRED, "num_samples": 10_000, "seed": 0, "question_len": 32, "answer_len": 12, "digits": 5,
                 "keys": None, "distractors": 0, "min_seq_len": None},
    "poc_labels": {"path": _REQUIRED, "seq_len": _REQUIRED, "split": "train", "validation_fraction": 0.1,
                   "num_samples": None, "seed": 0, "storage_options": None},
    "qa_jsonl": {"path": _REQUIRED, "seq_len": _REQUIRED, "question_len": 64, "answer_len": 32, "on_bad_record": "fail",
                 "num_samples": None, "seed": 0, "storage_options": None},
}
QA_KINDS = ("qa_facts", "qa_jsonl")
CHUNKING_KEYS = {"strategy": _REQUIRED, "chunk_size": _REQUIRED, "seed": 0, "min_chunk": 4}
_INT_KEYS = {"seq_len", "num_samples", "seed", "digits", "num_needles", "num_queries", "chunk_size", "min_chunk",
             "question_len", "answer_len", "distractors", "min_seq_len"}


_TYPES = {"storage_options": "dict | None", "filler": "str | list[int] | None", "depth": "float | None",
          "seq_len_schedule": "list[[int, int]] | None", "keys": "list[str] | None", "temperature": "float | [lo, hi]",
          "path": "str (local path or fsspec URL: s3://, gs://, ...)", "chunking": "dict | None"}


def option_type(key: str, default: Any) -> str:
    """The type of a data option, as --help-config shows it."""
    if key in _TYPES:
        return _TYPES[key]
    if key in _INT_KEYS:
        return "int" if default is not None or key == "seq_len" else "int | None"
    if default is None:
        return "str | None"
    return type(default).__name__


def describe_options(kind: str) -> list[str]:
    """One line per option of data kind `kind` (name, default or REQUIRED, type), for --help-config."""
    import json

    if kind not in KINDS:
        return [f"# data.kind={kind!r} is unknown: use one of {', '.join(KINDS)}"]
    lines = [f"# data.options of data.kind={kind!r} (set as --data.options '{{\"key\": value, ...}}'):"]
    for key, default in KINDS[kind].items():
        if key == "seq_len":  # the job's data.seq_len
            continue
        shown = "REQUIRED" if default is _REQUIRED else json.dumps(default)
        lines.append(f"#   {key} {shown}  ({option_type(key, None if default is _REQUIRED else default)})")
    if kind not in QA_KINDS:
        lines.append("#   chunking null  (dict | None: {\"strategy\": ..., \"chunk_size\": int, \"seed\": 0, \"min_chunk\": 4})")
    others = [k for k in KINDS if k != kind]
    lines.append(f"# other kinds: {', '.join(others)} (each with keys of its own: --data.kind K --help-config)")
    return lines


def _unknown(key: str, allowed, where: str) -> DataConfigError:
    close = difflib.get_close_matches(key, list(allowed), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return DataConfigError(f"{where}: unknown key {key!r}.{hint} Allowed keys: {', '.join(sorted(allowed))}.")


def validate_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Check a spec and fill in defaults; returns the complete spec."""
    if not isinstance(spec, Mapping):
        raise DataConfigError(f"a data spec must be a mapping with a 'kind' key, got {type(spec).__name__}. "
                              "Example: {'kind': 'passkey', 'seq_len': 4096}.")
    kind = spec.get("kind")
    if kind not in KINDS:
        raise DataConfigError(f"data spec kind={kind!r} is unknown: use one of {', '.join(KINDS)}. "
                              "Example: {'kind': 'passkey', 'seq_len': 4096}.")
    schema = KINDS[kind]
    allowed = set(schema) | {"kind", "chunking"}
    out: dict[str, Any] = {"kind": kind}
    for key in spec:
        if key not in allowed:
            raise _unknown(key, allowed, f"data spec kind={kind!r}")
    for key, default in schema.items():
        if key in spec:
            out[key] = spec[key]
        elif default is _REQUIRED:
            raise DataConfigError(f"data spec kind={kind!r} needs {key!r}: add it, e.g. "
                                  f"{{'kind': {kind!r}, {key!r}: {_example(key)!r}}}.")
        else:
            out[key] = default
    for key, value in out.items():
        if key in _INT_KEYS and (isinstance(value, bool) or not isinstance(value, int)) and not (key in ("num_samples", "min_seq_len") and value is None):
            raise DataConfigError(f"data spec {key}={value!r} must be an int (got {type(value).__name__}), e.g. {_example(key)}.")
    if "seq_len" in out and out["seq_len"] < 2:
        raise DataConfigError(f"data spec seq_len={out['seq_len']} must be >= 2 tokens, e.g. 4096.")
    if "path" in out and (not isinstance(out["path"], (str, list, tuple)) or not out["path"]) \
            and not (kind == "text" and out["path"] is None):
        raise DataConfigError(f"data spec path={out['path']!r} must be a non-empty URI (or a list of URIs).")
    if kind == "entropy_text":
        from data_pipelines.entropy_text import check_temperature

        check_temperature(out["temperature"])
        if out["num_samples"] < 1 or out["words"] < 2:
            raise DataConfigError(f"data spec num_samples={out['num_samples']} and words={out['words']} must be >= 1 "
                                  "and >= 2, e.g. num_samples=10000, words=64.")
    if out.get("seq_len_schedule") is not None:
        from data_pipelines.schedule import check_schedule

        check_schedule(out["seq_len_schedule"], out["seq_len"])
    chunking = spec.get("chunking")
    if chunking is not None and kind in QA_KINDS:
        raise DataConfigError(f"data spec kind={kind!r} does not take chunking: chunk plans are drawn over input_ids, and "
                              "QA samples have context_ids instead; chunk the context in the method. Remove 'chunking'.")
    if chunking is not None:
        if not isinstance(chunking, Mapping):
            raise DataConfigError(f"data spec chunking={chunking!r} must be None or a mapping like "
                                  "{'strategy': 'paper', 'chunk_size': 2048}.")
        filled = {}
        for key in chunking:
            if key not in CHUNKING_KEYS:
                raise _unknown(key, CHUNKING_KEYS, "data spec chunking")
        for key, default in CHUNKING_KEYS.items():
            if key not in chunking and default is _REQUIRED:
                raise DataConfigError(f"data spec chunking needs {key!r}, e.g. {{'strategy': 'paper', 'chunk_size': 2048}}.")
            filled[key] = chunking.get(key, default)
            if key in _INT_KEYS and (isinstance(filled[key], bool) or not isinstance(filled[key], int)):
                raise DataConfigError(f"data spec chunking.{key}={filled[key]!r} must be an int, e.g. {_example(key)}.")
        from data_pipelines.chunking import STRATEGIES

        if filled["strategy"] not in STRATEGIES:
            raise DataConfigError(f"data spec chunking.strategy={filled['strategy']!r} is unknown: use one of "
                                  f"{', '.join(STRATEGIES)} ('paper' mixes them as in the CoMeT paper).")
        if filled["chunk_size"] < 1 or filled["min_chunk"] < 1:
            raise DataConfigError(f"data spec chunking.chunk_size={filled['chunk_size']} and min_chunk={filled['min_chunk']} "
                                  "must be >= 1, e.g. chunk_size=2048.")
        out["chunking"] = filled
    else:
        out["chunking"] = None
    return out


def _example(key: str):
    return {"seq_len": 4096, "num_samples": 10_000, "path": "/data/tokens", "chunk_size": 2048, "seed": 0,
            "digits": 5, "num_needles": 4, "num_queries": 1, "min_chunk": 4, "question_len": 64, "answer_len": 32,
            "distractors": 4}.get(key, "...")


def build_source(spec: Mapping[str, Any], tokenizer):
    """Build the map-style source described by ``spec`` (see the module docstring)."""
    spec = validate_spec(spec)
    kind = spec["kind"]
    if kind == "passkey":
        from data_pipelines.synthetic import PasskeyTask

        source = PasskeyTask(tokenizer, seq_len=spec["seq_len"], num_samples=spec["num_samples"], seed=spec["seed"],
                             digits=spec["digits"], depth=spec["depth"], filler=spec["filler"],
                             label_needle=spec["label_needle"], filler_start=spec["filler_start"],
                             edge_depth_prob=spec["edge_depth_prob"])
    elif kind == "needle":
        from data_pipelines.synthetic import NeedleTask

        source = NeedleTask(tokenizer, seq_len=spec["seq_len"], num_samples=spec["num_samples"], seed=spec["seed"],
                            num_needles=spec["num_needles"], num_queries=spec["num_queries"], digits=spec["digits"],
                            filler=spec["filler"])
    elif kind == "store_windows":
        from data_pipelines.corpus import tokenizer_fingerprint
        from data_pipelines.store import TokenStore
        from data_pipelines.windows import StoreWindows

        store = TokenStore(spec["path"], spec["storage_options"])
        recorded = store.manifest.get("tokenizer", {})
        if tokenizer is not None and recorded.get("fingerprint") != tokenizer_fingerprint(tokenizer):
            raise DataConfigError(
                f"the store {spec['path']!r} was tokenized with {recorded.get('name_or_path')!r} "
                f"(fingerprint {str(recorded.get('fingerprint'))[:12]}), not with the tokenizer given here "
                f"({getattr(tokenizer, 'name_or_path', '?')!r}): token ids would not match the model. "
                "Use the same tokenizer, or prepare the store again with --tokenizer."
            )
        source = StoreWindows(store, spec["seq_len"], spec["packing"], num_samples=spec["num_samples"], seed=spec["seed"])
    elif kind == "text":
        from data_pipelines.text import TextWindows

        source = TextWindows(tokenizer, spec["seq_len"], path=spec["path"], field=spec["field"], split=spec["split"],
                             validation_fraction=spec["validation_fraction"], num_samples=spec["num_samples"],
                             seed=spec["seed"], storage_options=spec["storage_options"])
    elif kind == "entropy_text":
        from data_pipelines.entropy_text import EntropyText

        source = EntropyText(tokenizer, spec["seq_len"], num_samples=spec["num_samples"], seed=spec["seed"],
                             words=spec["words"], temperature=spec["temperature"], chain_seed=spec["chain_seed"])
    elif kind == "qa_facts":
        from data_pipelines.qa import QAFacts

        source = QAFacts(tokenizer, seq_len=spec["seq_len"], num_samples=spec["num_samples"], seed=spec["seed"],
                         question_len=spec["question_len"], answer_len=spec["answer_len"], digits=spec["digits"],
                         keys=spec["keys"], distractors=spec["distractors"], min_seq_len=spec["min_seq_len"])
    elif kind == "poc_labels":
        from data_pipelines.poc_labels import PoCLabels

        pad = getattr(tokenizer, "pad_token_id", None)
        source = PoCLabels(spec["path"], spec["seq_len"], split=spec["split"],
                           validation_fraction=spec["validation_fraction"], num_samples=spec["num_samples"],
                           seed=spec["seed"], storage_options=spec["storage_options"],
                           pad_token_id=int(pad) if pad is not None else 0)
    elif kind == "qa_jsonl":
        from data_pipelines.qa import QAJsonl

        source = QAJsonl(spec["path"], tokenizer, spec["seq_len"], question_len=spec["question_len"],
                         answer_len=spec["answer_len"], on_bad_record=spec["on_bad_record"],
                         num_samples=spec["num_samples"], seed=spec["seed"], storage_options=spec["storage_options"])
    else:
        from data_pipelines.chat import ChatSource

        source = ChatSource(spec["path"], tokenizer, spec["seq_len"], packing=spec["packing"], field=spec["field"],
                            on_bad_record=spec["on_bad_record"], storage_options=spec["storage_options"],
                            num_samples=spec["num_samples"], seed=spec["seed"])
    if spec.get("seq_len_schedule") is not None:
        from data_pipelines.schedule import LengthSchedule, check_schedule

        final = source
        pairs = check_schedule(spec["seq_len_schedule"], spec["seq_len"])
        source = LengthSchedule(lambda n: final if n == spec["seq_len"] else build_source(
            {**spec, "seq_len": n, "seq_len_schedule": None, "chunking": None}, tokenizer), pairs)
    if spec["chunking"] is not None:
        from data_pipelines.chunking import ChunkedSource

        c = spec["chunking"]
        source = ChunkedSource(source, chunk_size=c["chunk_size"], strategy=c["strategy"], seed=c["seed"],
                               tokenizer=tokenizer, min_chunk=c["min_chunk"])
    return source
