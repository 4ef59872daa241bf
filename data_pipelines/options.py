"""The options of each data kind: one dataclass per kind, the one schema of a data spec.

A data spec is a plain mapping ``{"kind": K, **options}`` (YAML/CLI friendly; the framework passes
``{"kind": data.kind, "seq_len": data.seq_len, "seed": data.seed, **data.options}``).
:func:`parse_spec` checks it by building kind K's dataclass (:data:`OPTIONS`): an unknown key (with
a did-you-mean), a missing required key, a value of the wrong type and the ranges that need no data
raise :class:`DataConfigError` naming the key, the rule and the fix, before any data is read. Rules
that need the data (a store's number of windows, the tokenizer's words) stay with the sources.
``options.build(tokenizer)`` makes the kind's source from the typed fields, and
:func:`describe_options` (``--help-config``) lists the same fields.

Every field has a type, a default (none when it is required) and a one-line ``doc`` in its metadata:
``dataclasses.fields(PasskeyOptions)[i].metadata["doc"]``.

This module imports nothing from ``framework``: the framework's ``from_dict`` lives there, so the
small from-mapping here (:func:`parse_spec`) stands in for it.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from dataclasses import MISSING, dataclass, field
from typing import Any, ClassVar, Mapping

from data_pipelines.errors import DataConfigError

PATH_TYPE = "str (local path or fsspec URL: s3://, gs://, ...)"


def option(default: Any = MISSING, *, doc: str, example: Any = MISSING, shown: str | None = None,
           typed: bool = True):
    """A data option: ``doc`` is its one-line help; ``example`` the value a fix suggests (else the
    default); ``shown`` the type --help-config shows (else the annotation's); ``typed=False`` when the
    kind's ``check()`` checks the value's type itself, with a message of its own."""
    return field(default=default, metadata={"doc": doc, "example": example, "shown": shown, "typed": typed})


def _type_name(tp) -> str:
    if tp is type(None):
        return "None"
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in typing.get_args(tp))}]"
    return getattr(tp, "__name__", str(tp))


def _matches(value, tp) -> bool:
    """Whether `value` (from YAML, JSON or Python) has the annotated type `tp`."""
    if tp is Any:
        return True
    if tp is type(None):
        return value is None
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in typing.get_args(tp))
    if origin in (list, tuple) or tp in (list, tuple):
        args = typing.get_args(tp)
        return isinstance(value, (list, tuple)) and (not args or all(_matches(v, args[0]) for v in value))
    if origin is dict or tp is dict:
        return isinstance(value, Mapping)
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, tp) if isinstance(tp, type) else True


def _unknown(key: str, allowed, where: str) -> DataConfigError:
    close = difflib.get_close_matches(key, list(allowed), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return DataConfigError(f"{where}: unknown key {key!r}.{hint} Allowed keys: {', '.join(sorted(allowed))}.")


def _example(f: dataclasses.Field):
    if f.metadata.get("example", MISSING) is not MISSING:
        return f.metadata["example"]
    return "..." if f.default is MISSING else f.default


class _Fields:
    """Type checks of the fields (from their annotations), then the class's own ``check()``."""

    WHERE: ClassVar[str] = "data spec "  # the start of each message: "data spec seed=..."

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            if f.name == "chunking" or not f.metadata.get("typed", True):
                continue
            value, tp = getattr(self, f.name), hints[f.name]
            if _matches(value, tp):
                continue
            got = type(value).__name__
            if tp is int or typing.get_args(tp) == (int, type(None)):  # int, int | None
                raise DataConfigError(f"{self.WHERE}{f.name}={value!r} must be an int (got {got}), e.g. {_example(f)}.")
            shown = f.metadata.get("shown") or _type_name(tp)
            raise DataConfigError(f"{self.WHERE}{f.name}={value!r} must be {shown} (got {got}), "
                                  f"e.g. {json.dumps(_example(f))}.")
        self.check()

    def check(self) -> None:
        """The rules beyond each field's type (ranges, fields that depend on each other)."""


@dataclass
class ChunkingOptions(_Fields):
    """A chunk plan drawn per sample and added to it as ``chunk_ids`` (``data_pipelines.chunking``)."""

    WHERE: ClassVar[str] = "data spec chunking."

    strategy: str = option(doc='"fixed", "right_aligned", "random", "uniform", "semantic", or "paper" (mixes them '
                               "as in the CoMeT paper)", example="paper")
    chunk_size: int = option(doc="tokens per chunk (the model's chunk size)", example=2048)
    seed: int = option(0, doc="seeds the plans of the random strategies", example=0)
    min_chunk: int = option(4, doc="the shortest chunk a random strategy draws", example=4)

    def check(self) -> None:
        from data_pipelines.chunking import STRATEGIES

        if self.strategy not in STRATEGIES:
            raise DataConfigError(f"data spec chunking.strategy={self.strategy!r} is unknown: use one of "
                                  f"{', '.join(STRATEGIES)} ('paper' mixes them as in the CoMeT paper).")
        if self.chunk_size < 1 or self.min_chunk < 1:
            raise DataConfigError(f"data spec chunking.chunk_size={self.chunk_size} and min_chunk={self.min_chunk} "
                                  "must be >= 1, e.g. chunk_size=2048.")

    @classmethod
    def from_mapping(cls, chunking) -> ChunkingOptions:
        if isinstance(chunking, cls):
            return chunking
        if not isinstance(chunking, Mapping):
            raise DataConfigError(f"data spec chunking={chunking!r} must be None or a mapping like "
                                  "{'strategy': 'paper', 'chunk_size': 2048}.")
        names = [f.name for f in dataclasses.fields(cls)]
        for key in chunking:
            if key not in names:
                raise _unknown(key, names, "data spec chunking")
        for f in dataclasses.fields(cls):
            if f.name not in chunking and f.default is MISSING:
                raise DataConfigError(f"data spec chunking needs {f.name!r}, e.g. {{'strategy': 'paper', "
                                      "'chunk_size': 2048}.")
        return cls(**chunking)


def _chunking_type() -> str:
    keys = []
    for f in dataclasses.fields(ChunkingOptions):
        if f.default is not MISSING:
            shown = json.dumps(f.default)
        else:
            shown = "..." if f.type in (str, "str") else str(f.type)
        keys.append(f"\"{f.name}\": {shown}")
    return f"dict | None: {{{', '.join(keys)}}}"


def _chunking():
    return option(None, doc="None, or a chunk plan added to every sample as chunk_ids (ChunkingOptions)",
                  shown=_chunking_type())


def _seq_len():
    return option(doc="tokens per sample (the job's data.seq_len)", example=4096)


def _seq_len_schedule():
    return option(None, doc="[[start_sample, length], ...]: a length curriculum by global sample position "
                            "(data_pipelines.schedule); the last length is seq_len",
                  shown="list[[int, int]] | None", typed=False)


def _path(what: str, default: Any = MISSING):
    return option(default, doc=what, example="/data/tokens", shown=PATH_TYPE, typed=False)


def _subset():
    return option(None, doc="None: every window; else a seeded random subset of that many (at most all of them)",
                  example=10_000)


def _subset_seed():
    return option(0, doc="picks the num_samples subset", example=0)


def _storage_options():
    return option(None, doc="fsspec options for path (credentials, endpoint, ...)", example={})


def _on_bad_record():
    return option("fail", doc='"fail" stops at the first bad record (naming file:line); "skip" drops and counts it')


class Options(_Fields):
    """The options of one data kind (a dataclass per kind below)."""

    KIND: ClassVar[str]

    def __post_init__(self) -> None:
        super().__post_init__()
        if getattr(self, "chunking", None) is not None:
            self.chunking = ChunkingOptions.from_mapping(self.chunking)

    def check(self) -> None:
        if self.seq_len < 2:
            raise DataConfigError(f"data spec seq_len={self.seq_len} must be >= 2 tokens, e.g. 4096.")
        path_field = self.__dataclass_fields__.get("path")
        if path_field is not None:
            path = self.path
            unset = path is None and path_field.default is None  # the text kind's shipped novels
            if not unset and (not isinstance(path, (str, list, tuple)) or not path):
                raise DataConfigError(f"data spec path={path!r} must be a non-empty URI (or a list of URIs).")
        schedule = getattr(self, "seq_len_schedule", None)
        if schedule is not None:
            from data_pipelines.schedule import check_schedule

            check_schedule(schedule, self.seq_len)

    def to_spec(self) -> dict[str, Any]:
        """The complete spec (every key, defaults filled in; ``chunking`` a dict or None)."""
        out: dict[str, Any] = {"kind": self.KIND}
        for f in dataclasses.fields(self):
            if f.name != "chunking":
                out[f.name] = getattr(self, f.name)
        chunking = getattr(self, "chunking", None)
        out["chunking"] = None if chunking is None else dataclasses.asdict(chunking)
        return out

    def at_length(self, seq_len: int) -> Options:
        """These options at another seq_len, without a schedule or chunking (a schedule's stage)."""
        changes: dict[str, Any] = {"seq_len": seq_len}
        for name in ("seq_len_schedule", "chunking"):
            if hasattr(self, name):
                changes[name] = None
        return dataclasses.replace(self, **changes)

    def build(self, tokenizer):
        """The kind's map-style source (without the schedule or chunk plans: see ``factory.build_source``)."""
        raise NotImplementedError


@dataclass
class PasskeyOptions(Options):
    """Passkey retrieval: a ``digits``-digit key hidden at some depth in filler text (``synthetic.PasskeyTask``)."""

    KIND: ClassVar[str] = "passkey"

    seq_len: int = _seq_len()
    num_samples: int = option(10_000, doc="samples in the task (each a pure function of seed and index)")
    seed: int = option(0, doc="picks the samples (keys, depths, filler offsets)")
    digits: int = option(5, doc="digits of the key")
    depth: float | None = option(None, doc="None: a uniform random depth per sample; else a fixed depth in [0, 1] "
                                           "(0: right after the instructions, 1: right before the question)",
                                 example=0.5)
    filler: str | list[int] | None = option(None, doc="the haystack: None for the shipped novels, a text, or token "
                                                      "ids; read cyclically")
    label_needle: bool = option(False, doc="also label the key's second mention inside the needle (a dense copy "
                                           "signal for a model trained from scratch)")
    filler_start: str = option("sentence", doc='"sentence" starts the filler at a random sentence start, "token" at '
                                               "any token")
    edge_depth_prob: float = option(0.0, doc="the chance that a random depth is exactly 0 or 1 (half each)")
    seq_len_schedule: list[list[int]] | None = _seq_len_schedule()
    chunking: ChunkingOptions | None = _chunking()

    def build(self, tokenizer):
        from data_pipelines.synthetic import PasskeyTask

        return PasskeyTask(tokenizer, seq_len=self.seq_len, num_samples=self.num_samples, seed=self.seed,
                           digits=self.digits, depth=self.depth, filler=self.filler, label_needle=self.label_needle,
                           filler_start=self.filler_start, edge_depth_prob=self.edge_depth_prob)


@dataclass
class NeedleOptions(Options):
    """Multi-key needles: ``num_needles`` key-value pairs in filler text, ``num_queries`` of them asked
    (``synthetic.NeedleTask``)."""

    KIND: ClassVar[str] = "needle"

    seq_len: int = _seq_len()
    num_samples: int = option(10_000, doc="samples in the task (each a pure function of seed and index)")
    seed: int = option(0, doc="picks the samples")
    num_needles: int = option(4, doc="key-value pairs hidden in the filler")
    num_queries: int = option(1, doc="of them, the keys asked for at the end")
    digits: int = option(7, doc="digits of each value")
    filler: str | list[int] | None = option(None, doc="the haystack: None for the shipped novels, a text, or token "
                                                      "ids; read cyclically")
    seq_len_schedule: list[list[int]] | None = _seq_len_schedule()
    chunking: ChunkingOptions | None = _chunking()

    def build(self, tokenizer):
        from data_pipelines.synthetic import NeedleTask

        return NeedleTask(tokenizer, seq_len=self.seq_len, num_samples=self.num_samples, seed=self.seed,
                          num_needles=self.num_needles, num_queries=self.num_queries, digits=self.digits,
                          filler=self.filler)


@dataclass
class StoreWindowsOptions(Options):
    """Windows over a token store made by ``longctx data prepare`` (``windows.StoreWindows``)."""

    KIND: ClassVar[str] = "store_windows"

    path: str | list = _path("the token store")
    seq_len: int = _seq_len()
    packing: str = option("concat", doc='"concat": dense windows, documents may span them; "aligned": documents '
                                        "start windows, padded")
    num_samples: int | None = _subset()
    seed: int = _subset_seed()
    storage_options: dict | None = _storage_options()
    chunking: ChunkingOptions | None = _chunking()

    def build(self, tokenizer):
        from data_pipelines.corpus import tokenizer_fingerprint
        from data_pipelines.store import TokenStore
        from data_pipelines.windows import StoreWindows

        store = TokenStore(self.path, self.storage_options)
        recorded = store.manifest.get("tokenizer", {})
        if tokenizer is not None and recorded.get("fingerprint") != tokenizer_fingerprint(tokenizer):
            raise DataConfigError(
                f"the store {self.path!r} was tokenized with {recorded.get('name_or_path')!r} "
                f"(fingerprint {str(recorded.get('fingerprint'))[:12]}), not with the tokenizer given here "
                f"({getattr(tokenizer, 'name_or_path', '?')!r}): token ids would not match the model. "
                "Use the same tokenizer, or prepare the store again with --tokenizer."
            )
        return StoreWindows(store, self.seq_len, self.packing, num_samples=self.num_samples, seed=self.seed)


@dataclass
class TextOptions(Options):
    """Natural text tokenized in memory, in windows (``text.TextWindows``)."""

    KIND: ClassVar[str] = "text"

    seq_len: int = _seq_len()
    path: str | list | None = _path("None: the shipped novels; else text files (jsonl, parquet, txt, ...)", None)
    field: str = option("text", doc="the text field of structured records")
    split: str = option("train", doc='"train", "validation" (the last validation_fraction of the tokens) or "all"')
    validation_fraction: float = option(0.05, doc="the share of the tokens that the validation split holds")
    num_samples: int | None = _subset()
    seed: int = _subset_seed()
    storage_options: dict | None = _storage_options()
    chunking: ChunkingOptions | None = _chunking()

    def build(self, tokenizer):
        from data_pipelines.text import TextWindows

        return TextWindows(tokenizer, self.seq_len, path=self.path, field=self.field, split=self.split,
                           validation_fraction=self.validation_fraction, num_samples=self.num_samples,
                           seed=self.seed, storage_options=self.storage_options)


@dataclass
class EntropyTextOptions(Options):
    """Word sequences of controlled entropy from a seeded Markov chain (``entropy_text.EntropyText``)."""

    KIND: ClassVar[str] = "entropy_text"

    seq_len: int = _seq_len()
    num_samples: int = option(10_000, doc="samples in the corpus (each a pure function of chain_seed, seed and index)")
    seed: int = option(0, doc="picks the samples (seed=1 gives held-out samples of the same language)")
    words: int = option(64, doc="single-token words of the chain (at least 2)")
    temperature: float | list[float] = option(1.0, doc="a positive number, or [lo, hi] drawn log-uniformly per "
                                                       "sample: sets the entropy per token",
                                              shown="float | [lo, hi]", typed=False)
    chain_seed: int = option(0, doc="picks the language (the chain's transition scores)")
    chunking: ChunkingOptions | None = _chunking()

    def check(self) -> None:
        from data_pipelines.entropy_text import check_temperature

        super().check()
        check_temperature(self.temperature)
        if self.num_samples < 1 or self.words < 2:
            raise DataConfigError(f"data spec num_samples={self.num_samples} and words={self.words} must be >= 1 "
                                  "and >= 2, e.g. num_samples=10000, words=64.")

    def build(self, tokenizer):
        from data_pipelines.entropy_text import EntropyText

        return EntropyText(tokenizer, self.seq_len, num_samples=self.num_samples, seed=self.seed, words=self.words,
                           temperature=self.temperature, chain_seed=self.chain_seed)


@dataclass
class ChatOptions(Options):
    """Chat conversations with a loss mask on the assistant turns (``chat.ChatSource``)."""

    KIND: ClassVar[str] = "chat"

    path: str | list = _path("a chat store, conversation files (or a list of them), or a list of conversations")
    seq_len: int = _seq_len()
    packing: str = option("aligned", doc='"aligned": conversations start windows, padded; "concat": dense windows')
    field: str = option("messages", doc="the messages field of a conversation record")
    on_bad_record: str = _on_bad_record()
    num_samples: int | None = _subset()
    seed: int = _subset_seed()
    storage_options: dict | None = _storage_options()
    chunking: ChunkingOptions | None = _chunking()

    def build(self, tokenizer):
        from data_pipelines.chat import ChatSource

        return ChatSource(self.path, tokenizer, self.seq_len, packing=self.packing, field=self.field,
                          on_bad_record=self.on_bad_record, storage_options=self.storage_options,
                          num_samples=self.num_samples, seed=self.seed)


@dataclass
class QAFactsOptions(Options):
    """Synthetic "key: value" fact retrieval, QA samples (``qa.QAFacts``); takes no chunking."""

    KIND: ClassVar[str] = "qa_facts"

    seq_len: int = option(doc="context tokens per sample (the job's data.seq_len)", example=4096)
    num_samples: int = option(10_000, doc="samples in the task (each a pure function of seed and index)")
    seed: int = option(0, doc="picks the samples")
    question_len: int = option(32, doc="question tokens per sample (padded)", example=64)
    answer_len: int = option(12, doc="answer tokens per sample, with the eos (padded)", example=32)
    digits: int = option(5, doc="digits of each value")
    keys: list[str] | None = option(None, doc="None: built-in single-token words; else distinct words (no ':' or "
                                              "newline)", example=["amber", "birch"])
    distractors: int = option(0, doc="facts of other keys that repeat the queried value", example=4)
    min_seq_len: int | None = option(None, doc="None: every context fills seq_len; else each fills a length drawn "
                                               "from [min_seq_len, seq_len]", example=64)

    def build(self, tokenizer):
        from data_pipelines.qa import QAFacts

        return QAFacts(tokenizer, seq_len=self.seq_len, num_samples=self.num_samples, seed=self.seed,
                       question_len=self.question_len, answer_len=self.answer_len, digits=self.digits,
                       keys=self.keys, distractors=self.distractors, min_seq_len=self.min_seq_len)


@dataclass
class PoCLabelsOptions(Options):
    """PoC's cached (context, ratios, retention) labels (``poc_label_cache.PoCLabels``); the last
    validation_fraction of the contexts is the validation split, so held-out contexts are never trained on."""

    KIND: ClassVar[str] = "poc_labels"

    path: str | list = _path("the label cache (written by recipes/poc_predictor.py)")
    seq_len: int = _seq_len()
    split: str = option("train", doc='"train", "validation" (the last validation_fraction of the contexts) or "all"')
    validation_fraction: float = option(0.1, doc="the share of the contexts that the validation split holds")
    num_samples: int | None = _subset()
    seed: int = _subset_seed()
    storage_options: dict | None = _storage_options()
    chunking: ChunkingOptions | None = _chunking()

    def build(self, tokenizer):
        from data_pipelines.poc_label_cache import PoCLabels

        pad = getattr(tokenizer, "pad_token_id", None)
        return PoCLabels(self.path, self.seq_len, split=self.split, validation_fraction=self.validation_fraction,
                         num_samples=self.num_samples, seed=self.seed, storage_options=self.storage_options,
                         pad_token_id=int(pad) if pad is not None else 0)


@dataclass
class QAJsonlOptions(Options):
    """RAM/COMI JSONL ``{input, prompt, answer}`` records, QA samples (``qa.QAJsonl``); takes no chunking."""

    KIND: ClassVar[str] = "qa_jsonl"

    path: str | list = _path("JSONL files, a folder or a glob (or a list of them)")
    seq_len: int = option(doc="context tokens per sample; a longer context keeps its start", example=4096)
    question_len: int = option(64, doc="question tokens per sample (padded; a longer one keeps its start)")
    answer_len: int = option(32, doc="answer tokens per sample, with the eos (padded; a longer one keeps its start)")
    on_bad_record: str = _on_bad_record()
    num_samples: int | None = option(None, doc="None: every record; else a seeded random subset of that many",
                                     example=10_000)
    seed: int = _subset_seed()
    storage_options: dict | None = _storage_options()

    def build(self, tokenizer):
        from data_pipelines.qa import QAJsonl

        return QAJsonl(self.path, tokenizer, self.seq_len, question_len=self.question_len, answer_len=self.answer_len,
                       on_bad_record=self.on_bad_record, num_samples=self.num_samples, seed=self.seed,
                       storage_options=self.storage_options)


OPTIONS: dict[str, type[Options]] = {cls.KIND: cls for cls in (
    PasskeyOptions, NeedleOptions, StoreWindowsOptions, TextOptions, EntropyTextOptions, ChatOptions, QAFactsOptions,
    PoCLabelsOptions, QAJsonlOptions)}
"""Each data kind's options dataclass, in the order --help-config and the errors list the kinds."""


def takes_chunking(kind: str) -> bool:
    return "chunking" in OPTIONS[kind].__dataclass_fields__


def parse_spec(spec: Mapping[str, Any]) -> Options:
    """The typed options of a spec mapping ``{"kind": K, **options}``; DataConfigError when it breaks a rule."""
    if isinstance(spec, Options):
        return spec
    if not isinstance(spec, Mapping):
        raise DataConfigError(f"a data spec must be a mapping with a 'kind' key, got {type(spec).__name__}. "
                              "Example: {'kind': 'passkey', 'seq_len': 4096}.")
    kind = spec.get("kind")
    if not isinstance(kind, str) or kind not in OPTIONS:
        raise DataConfigError(f"data spec kind={kind!r} is unknown: use one of {', '.join(OPTIONS)}. "
                              "Example: {'kind': 'passkey', 'seq_len': 4096}.")
    cls = OPTIONS[kind]
    fields = dataclasses.fields(cls)
    allowed = {f.name for f in fields} | {"kind", "chunking"}  # a QA kind refuses chunking by name, below
    for key in spec:
        if key not in allowed:
            raise _unknown(key, allowed, f"data spec kind={kind!r}")
    for f in fields:
        if f.name not in spec and f.default is MISSING:
            raise DataConfigError(f"data spec kind={kind!r} needs {f.name!r}: add it, e.g. "
                                  f"{{'kind': {kind!r}, {f.name!r}: {_example(f)!r}}}.")
    options = cls(**{f.name: spec[f.name] for f in fields if f.name in spec})
    if spec.get("chunking") is not None and not takes_chunking(kind):
        raise DataConfigError(f"data spec kind={kind!r} does not take chunking: chunk plans are drawn over input_ids, "
                              "and QA samples have context_ids instead; chunk the context in the method. Remove "
                              "'chunking'.")
    return options


def describe_options(kind: str) -> list[str]:
    """One line per option of data kind `kind` (name, default or REQUIRED, type), for --help-config."""
    if kind not in OPTIONS:
        return [f"# data.kind={kind!r} is unknown: use one of {', '.join(OPTIONS)}"]
    cls = OPTIONS[kind]
    hints = typing.get_type_hints(cls)
    lines = [f"# data.options of data.kind={kind!r} (set as --data.options '{{\"key\": value, ...}}'):"]
    for f in dataclasses.fields(cls):
        if f.name == "seq_len":  # the job's data.seq_len
            continue
        shown = "REQUIRED" if f.default is MISSING else json.dumps(f.default)
        lines.append(f"#   {f.name} {shown}  ({f.metadata.get('shown') or _type_name(hints[f.name])})")
    others = [k for k in OPTIONS if k != kind]
    lines.append(f"# other kinds: {', '.join(others)} (each with keys of its own: --data.kind K --help-config)")
    return lines
