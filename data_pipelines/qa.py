"""Question-answering samples for context-compression methods (RAM, COMI): context, question, answer.

Two map-style sources, each sample a pure function of ``(seed, index)`` (any process, rank or
loader worker builds the same one):

- :class:`QAFacts` (kind ``qa_facts``): a synthetic long-context task. The context is a list of
  "key: value" facts (`` amber: 04817. lantern: 99120. ...``) with distinct single-token keys;
  the question asks for the value of one of them. The queried fact's tokens are the evidence,
  so the positive segment of RAM's contrastive loss is known exactly. ``distractors`` facts
  repeat the answer's digits under other keys (near-duplicates, for COMI's redundancy term).
- :class:`QAJsonl` (kind ``qa_jsonl``): the RAM/COMI JSONL format, one
  ``{"input": context, "prompt": question, "answer": str | [str, ...]}`` object per line, read
  from any fsspec URI (plain or compressed, via :mod:`data_pipelines.sources`).

Every sample is a dict of fixed-length tensors (so :func:`data_pipelines.loader.collate` stacks a
batch) plus the answer strings:

==================  ==========================  ==========================================================
key                 type                        meaning
==================  ==========================  ==========================================================
``context_ids``     LongTensor[seq_len]         context tokens, then ``pad_token_id``
``context_mask``    BoolTensor[seq_len]         True on real context tokens
``question_ids``    LongTensor[question_len]    "Question: {question}\\nAnswer:" tokens, then pad
``question_mask``   BoolTensor[question_len]    True on real question tokens (left-aligned)
``answer_ids``      LongTensor[answer_len]      " {answer}" tokens + eos, then pad
``answer_mask``     BoolTensor[answer_len]      True on the answer tokens and the eos
``evidence_mask``   BoolTensor[seq_len]         True on the context tokens that hold the answer
``answer_text``     str                         the training answer (the first one), stripped
``answers``         list[str]                   every acceptable answer, stripped (for EM/F1 scoring)
==================  ==========================  ==========================================================

The tokenizer must have an eos token; padding uses ``pad_token_id`` (eos when there is none).
Since the project tokenizer's pad and eos are the same token, use the masks, not the ids, to
tell them apart.
"""

from __future__ import annotations

import json
import re
import threading
from typing import Any, Sequence

import numpy as np
import torch

from data_pipelines.errors import BadRecordError, DataConfigError, require
from data_pipelines.synthetic import sample_rng

QUESTION_TEMPLATE = "Question: {question}\nAnswer:"
QA_KINDS = ("qa_facts", "qa_jsonl")  # the data kinds of this module (question-answer samples)
FACTS_QUESTION = "What is the value of {key}?"
ON_BAD_RECORD = ("fail", "skip")
_TEMPLATE_WORDS = frozenset({"question", "what", "is", "the", "value", "of", "answer"})
_KEY_CACHE: dict[str, tuple[str, ...]] = {}
_TEMPLATE_CACHE: dict[tuple, dict[str, Any]] = {}  # (tokenizer fingerprint, keys, digits) -> QAFacts token pieces
_KEY_LOCK = threading.Lock()
_SUBSET_SALT = 0x0A5A  # seeds the num_samples subset of qa_jsonl (text uses 0x7E57, store windows 0xC0FFEE)


# -- shared helpers ----------------------------------------------------------------------------
def _special_ids(tokenizer) -> tuple[int, int]:
    eos = tokenizer.eos_token_id
    require(eos is not None, f"the tokenizer {getattr(tokenizer, 'name_or_path', '?')!r} has no eos token: QA answers end "
                             "with it. Set tokenizer.eos_token first.")
    pad = tokenizer.pad_token_id
    return int(eos), int(eos if pad is None else pad)


def _encode(tokenizer, texts: Sequence[str]) -> list[np.ndarray]:
    if not texts:
        return []
    return [np.asarray(ids, dtype=np.int64) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def _padded(ids: np.ndarray, length: int, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    out = np.full(length, pad, dtype=np.int64)
    out[:ids.size] = ids
    mask = np.zeros(length, dtype=bool)
    mask[:ids.size] = True
    return torch.from_numpy(out), torch.from_numpy(mask)


def _check_int(name: str, value, low: int, example) -> None:
    require(isinstance(value, int) and not isinstance(value, bool) and value >= low,
            f"{name}={value!r} must be an int >= {low}. Pass e.g. {name}={example}.")


def _check_index(index: int, n: int) -> int:
    index = int(index)
    if index < 0:
        index += n
    if not 0 <= index < n:
        raise IndexError(f"index {index} is out of range for a source of {n} samples")
    return index


def builtin_keys(tokenizer) -> tuple[str, ...]:
    """The default keys of :class:`QAFacts` for ``tokenizer``: a sorted tuple of distinct words.

    A word qualifies when (1) the tokenizer's vocabulary holds it as one token with a leading
    space (``convert_tokens_to_string`` gives " word"), made of lowercase ASCII letters, at
    least 3 of them; (2) it occurs as a whole lowercase word in the shipped novels (this drops
    BPE fragments such as " abomin"); (3) ``tokenizer(" word")`` round-trips to that single
    token; (4) it is not a word of the question template ("what", "value", ...). For the project
    tokenizer this gives about 3,950 words. Cached per tokenizer.
    """
    from data_pipelines.corpus import shipped_text, tokenizer_fingerprint

    fingerprint = tokenizer_fingerprint(tokenizer)
    with _KEY_LOCK:
        cached = _KEY_CACHE.get(fingerprint)
        if cached is not None:
            return cached
        corpus_words = set(re.findall(r"(?<![A-Za-z'])[a-z]+(?![A-Za-z'])", shipped_text()))
        candidates = {}
        for token, idx in tokenizer.get_vocab().items():
            text = tokenizer.convert_tokens_to_string([token])
            word = text[1:]
            if (text.startswith(" ") and len(word) >= 3 and word.isascii() and word.isalpha() and word.islower()
                    and word in corpus_words and word not in _TEMPLATE_WORDS):
                candidates[word] = idx
        words = sorted(candidates)
        encoded = tokenizer([" " + w for w in words], add_special_tokens=False)["input_ids"] if words else []
        keys = tuple(w for w, ids in zip(words, encoded) if list(ids) == [candidates[w]])
        _KEY_CACHE[fingerprint] = keys
        return keys


def _wrap_question(question: str) -> str:
    return QUESTION_TEMPLATE.format(question=question)


# -- qa_facts ----------------------------------------------------------------------------------
class QAFacts:
    """Synthetic "key: value" fact retrieval: ``QAFacts(tokenizer, seq_len)``; samples as in the module docstring.

    Each sample draws a random order of the keys and lays out facts `` {key}: {value}.`` from the
    start of the context while whole facts fit in ``seq_len`` tokens (the rest is padding), so
    the keys of a sample are distinct. Values are ``digits`` uniform random digits (leading zeros
    allowed). One fact, uniform over the context, is queried: "Question: What is the value of
    {key}?\\nAnswer:", answer " {value}" + eos; every other fact has a different value, except
    ``distractors`` facts (other keys) that repeat the queried value exactly.

    ``keys``: None for :func:`builtin_keys`, or a list of distinct words (no ":" or newline); each
    key's facts must tokenize the same inside the context as alone (checked here).

    ``min_seq_len``: None (every context is filled up to ``seq_len``), or the shortest context: each
    sample then fills a budget drawn uniformly from [min_seq_len, seq_len] tokens (its own random
    stream, so the facts of the default samples do not change), giving contexts of varied length
    and number of facts (PoC's labels, where compressibility should vary between contexts).
    """

    def __init__(self, tokenizer, seq_len: int, num_samples: int = 10_000, seed: int = 0, question_len: int = 32,
                 answer_len: int = 12, digits: int = 5, keys: Sequence[str] | None = None, distractors: int = 0,
                 min_seq_len: int | None = None):
        _check_int("seq_len", seq_len, 1, 4096)
        _check_int("num_samples", num_samples, 1, 10_000)
        _check_int("seed", seed, 0, 0)
        _check_int("question_len", question_len, 1, 32)
        _check_int("answer_len", answer_len, 2, 12)
        _check_int("distractors", distractors, 0, 4)
        require(isinstance(digits, int) and not isinstance(digits, bool) and 1 <= digits <= 18,
                f"digits={digits!r} must be an int in [1, 18] (a value is drawn as an integer). Pass e.g. digits=5.")
        self.tokenizer = tokenizer
        self.seq_len, self.num_samples, self.seed = seq_len, num_samples, int(seed)
        self.question_len, self.answer_len, self.digits, self.distractors = question_len, answer_len, digits, distractors
        if min_seq_len is not None:
            _check_int("min_seq_len", min_seq_len, 1, seq_len // 2)
            require(min_seq_len <= seq_len, f"min_seq_len={min_seq_len} exceeds seq_len={seq_len}: the shortest "
                                            f"context cannot be longer than the longest. Pass e.g. min_seq_len={seq_len // 2}.")
        self.min_seq_len = min_seq_len
        self.eos_token_id, self.pad_token_id = _special_ids(tokenizer)
        self.keys = builtin_keys(tokenizer) if keys is None else self._check_keys(keys)
        require(len(self.keys) > 0, "the tokenizer has no single-token lowercase words to use as keys: pass keys=[...].")
        from data_pipelines.corpus import tokenizer_fingerprint

        cache_key = (tokenizer_fingerprint(tokenizer), self.keys, digits)
        with _KEY_LOCK:
            templates = _TEMPLATE_CACHE.get(cache_key)
        if templates is None:
            templates = self._build_templates()
            with _KEY_LOCK:
                if len(_TEMPLATE_CACHE) >= 16:
                    _TEMPLATE_CACHE.pop(next(iter(_TEMPLATE_CACHE)))
                _TEMPLATE_CACHE[cache_key] = templates
        self.__dict__.update(templates)
        self._check_lengths()

    # -- setup ---------------------------------------------------------------------------------
    @staticmethod
    def _check_keys(keys) -> tuple[str, ...]:
        require(isinstance(keys, (list, tuple)) and all(isinstance(k, str) for k in keys),
                f"keys={keys!r} must be None (the built-in words) or a list of strings, e.g. ['amber', 'cedar', 'willow'].")
        out = tuple(k.strip() for k in keys)
        bad = [k for k in out if not k or ":" in k or "\n" in k]
        require(not bad, f"keys {bad[:3]!r} are invalid: a key must be non-empty and hold no ':' or newline.")
        dupes = sorted({k for k in out if out.count(k) > 1})
        require(not dupes, f"keys must be distinct, but {dupes[:5]!r} repeat: remove the duplicates.")
        return out

    def _build_templates(self) -> dict[str, Any]:
        """The token pieces of facts, questions and answers (read-only; shared between instances)."""
        tok, d = self.tokenizer, self.digits
        digit_ids = _encode(tok, [str(i) for i in range(10)])
        require(all(ids.size == 1 for ids in digit_ids),
                "the tokenizer does not encode each digit as one token: qa_facts needs one token per digit (a digit "
                "pre-tokenizer split). Use data_pipelines.tokenizer.load_project_tokenizer().")
        digit_arr = np.asarray([int(ids[0]) for ids in digit_ids], dtype=np.int64)
        zeros = "0" * d
        key_ids = _encode(tok, [f" {k}" for k in self.keys])
        facts = _encode(tok, [f" {k}: {zeros}." for k in self.keys])
        # The fact template after the key: `A` + value digits + `B`, found in the first key's fact.
        rest = facts[0][key_ids[0].size:]
        zero_run = np.full(d, digit_arr[0])
        hits = [j for j in range(rest.size - d + 1) if np.array_equal(rest[j:j + d], zero_run)]
        require(np.array_equal(facts[0][:key_ids[0].size], key_ids[0]) and hits,
                f"the tokenizer splits the fact {' ' + self.keys[0] + ': ' + zeros + '.'!r} unexpectedly: the key and the "
                "digits must keep their own tokens. Use data_pipelines.tokenizer.load_project_tokenizer().")
        sep, end = rest[:hits[0]], rest[hits[0] + d:]
        tail = sep.size + d + end.size
        for k, ids, fact in zip(self.keys, key_ids, facts):
            if fact.size != ids.size + tail or not np.array_equal(fact[:ids.size], ids) \
                    or not np.array_equal(fact[ids.size:], rest):
                raise DataConfigError(f"key {k!r} tokenizes differently inside the fact ' {k}: {zeros}.' than alone: "
                                      "pick keys that end at a word boundary (e.g. plain words).")
        probe_value = ("9876543210" * 2)[:d]
        probe = _encode(tok, [f" {self.keys[0]}: {probe_value}. {self.keys[-1]}: {zeros}."])[0]
        want = np.concatenate([key_ids[0], sep, digit_arr[[int(c) for c in probe_value]], end, key_ids[-1], rest])
        require(np.array_equal(probe, want),
                "the tokenizer does not split consecutive facts at their boundaries: qa_facts builds contexts from "
                "token pieces. Use data_pipelines.tokenizer.load_project_tokenizer().")
        single = all(ids.size == 1 for ids in key_ids)
        questions = _encode(tok, [_wrap_question(FACTS_QUESTION.format(key=k)) for k in self.keys])
        answer_probe = _encode(tok, [" " + zeros])[0]
        require(answer_probe.size >= d and np.array_equal(answer_probe[answer_probe.size - d:], zero_run),
                "the tokenizer splits the answer ' 00000' unexpectedly: the digits must keep their own tokens.")
        out = {"_digit_ids": digit_arr, "_sep": sep, "_end": end, "_key_ids": key_ids, "_single": single,
               "_key_column": np.asarray([int(ids[0]) for ids in key_ids], dtype=np.int64) if single else None,
               "_fact_len": np.asarray([ids.size + tail for ids in key_ids], dtype=np.int64),
               "_questions": questions, "_answer_prefix": answer_probe[:answer_probe.size - d]}
        for value in out.values():
            if isinstance(value, np.ndarray):
                value.setflags(write=False)
        return out

    def _check_lengths(self) -> None:
        lens, n_keys = self._fact_len, len(self.keys)
        shortest, longest = int(lens.min()), int(lens.max())
        if shortest > self.seq_len:
            raise DataConfigError(
                f"seq_len={self.seq_len} is too short for one fact (needs {shortest} tokens, e.g. ' key: "
                f"{'0' * self.digits}.'). Use seq_len >= {shortest} (e.g. {shortest * 100} for about 100 facts).")
        # The fewest facts a sample can hold: the longest keys first.
        fewest = int(np.searchsorted(np.cumsum(np.sort(lens)[::-1]), self.seq_len, side="right"))
        if fewest < 1 + self.distractors:
            raise DataConfigError(
                f"distractors={self.distractors} needs {1 + self.distractors} facts in the context, but seq_len="
                f"{self.seq_len} holds only {fewest} (facts of up to {longest} tokens). Use seq_len >= "
                f"{longest * (1 + self.distractors)} or fewer distractors.")
        if self.min_seq_len is not None:
            need = longest * (1 + self.distractors)
            if self.min_seq_len < need:
                raise DataConfigError(
                    f"min_seq_len={self.min_seq_len} may leave room for fewer than the {1 + self.distractors} facts "
                    f"that distractors={self.distractors} needs (facts of up to {longest} tokens). Use "
                    f"min_seq_len >= {need}.")
        if self.distractors > n_keys - 1:
            raise DataConfigError(f"distractors={self.distractors} needs {1 + self.distractors} distinct keys, but there are "
                                  f"{n_keys}. Pass more keys or fewer distractors.")
        total = int(lens.sum())
        if total <= self.seq_len - longest:
            raise DataConfigError(
                f"the {n_keys} keys make facts of {total} tokens in all, less than seq_len={self.seq_len}: the context "
                "would end in padding with room for more facts, since a sample uses each key at most once. "
                f"Use seq_len <= {total}, or pass more keys (keys=[...]), or more digits (longer facts).")
        q_lens = np.asarray([q.size for q in self._questions])
        worst = int(q_lens.argmax())
        if q_lens[worst] > self.question_len:
            raise DataConfigError(
                f"question_len={self.question_len} is too short for the question of key {self.keys[worst]!r} "
                f"({int(q_lens[worst])} tokens: {_wrap_question(FACTS_QUESTION.format(key=self.keys[worst]))!r}). "
                f"Use question_len >= {int(q_lens[worst])}.")
        need = self._answer_prefix.size + self.digits + 1
        if need > self.answer_len:
            raise DataConfigError(
                f"answer_len={self.answer_len} is too short for a {self.digits}-digit answer (needs {need} tokens: "
                f"' {'0' * self.digits}' and eos). Use answer_len >= {need}.")

    # -- samples -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.num_samples

    def _value_block(self, values: np.ndarray) -> np.ndarray:
        """Token rows `A + digits + B` of the facts after their key, for integer ``values``."""
        powers = 10 ** np.arange(self.digits - 1, -1, -1, dtype=np.int64)
        digits = self._digit_ids[(values[:, None] // powers) % 10]
        n = values.size
        return np.concatenate([np.broadcast_to(self._sep, (n, self._sep.size)), digits,
                               np.broadcast_to(self._end, (n, self._end.size))], axis=1)

    def draw(self, index: int) -> dict[str, Any]:
        """The plan of sample ``index``: ``keys`` (key indices in context order), ``values`` (ints),
        ``query`` (position of the queried fact), ``distractors`` (positions sharing its value)."""
        index = _check_index(index, self.num_samples)
        rng = sample_rng(self.seed, index)
        order = rng.permutation(len(self.keys))
        budget = self.seq_len
        if self.min_seq_len is not None:
            budget = int(sample_rng(self.seed, index, stream=1).integers(self.min_seq_len, self.seq_len + 1))
        n = int(np.searchsorted(np.cumsum(self._fact_len[order]), budget, side="right"))
        order = order[:n]
        query = int(rng.integers(n))
        span = 10 ** self.digits
        answer = int(rng.integers(span))
        values = rng.integers(span - 1, size=n).astype(np.int64)
        values += values >= answer  # uniform over the values other than the answer
        values[query] = answer
        distractors = np.zeros(0, dtype=np.int64)
        if self.distractors:
            distractors = rng.choice(n - 1, self.distractors, replace=False).astype(np.int64)
            distractors += distractors >= query
            distractors.sort()
            values[distractors] = answer
        return {"keys": order, "values": values, "query": query, "distractors": distractors}

    def value_text(self, value: int) -> str:
        return str(int(value)).zfill(self.digits)

    def qa_pairs(self, index: int, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Token ids ``(question, answer)`` of ``n`` facts of sample ``index`` (fewer if it has fewer): the
        asked fact first, then others drawn from the sample's own stream. Several questions about one
        context give a reader more answers to learn from per context (multi-query recall)."""
        plan = self.draw(index)
        others = [j for j in range(len(plan["keys"])) if j != plan["query"]]
        rng = sample_rng(self.seed, index, stream=2)
        chosen = [plan["query"]] + [others[j] for j in rng.permutation(len(others))[:max(0, n - 1)]]
        return [(np.asarray(self._questions[int(plan["keys"][j])]), self._answer_ids(self.value_text(plan["values"][j])))
                for j in chosen]

    def _answer_ids(self, value: str) -> np.ndarray:
        """`` {value}`` + eos as token ids."""
        return np.concatenate([self._answer_prefix, self._digit_ids[[int(c) for c in value]],
                               [self.eos_token_id]]).astype(np.int64)

    def query(self, index: int) -> tuple[str, str]:
        """``(key, value)`` asked in sample ``index``."""
        plan = self.draw(index)
        q = plan["query"]
        return self.keys[int(plan["keys"][q])], self.value_text(plan["values"][q])

    def __getitem__(self, index: int) -> dict[str, Any]:
        plan = self.draw(index)
        order, values, q = plan["keys"], plan["values"], plan["query"]
        blocks = self._value_block(values)
        if self._single:
            facts = np.concatenate([self._key_column[order][:, None], blocks], axis=1).reshape(-1)
        else:
            facts = np.concatenate([x for k, row in zip(order.tolist(), blocks) for x in (self._key_ids[k], row)])
        used = facts.size
        context, context_mask = _padded(facts, self.seq_len, self.pad_token_id)
        ends = np.cumsum(self._fact_len[order])
        start, end = (int(ends[q - 1]) if q else 0), int(ends[q])
        evidence = torch.zeros(self.seq_len, dtype=torch.bool)
        evidence[start:end] = True
        assert used <= self.seq_len and end <= used
        key = int(order[q])
        question, question_mask = _padded(self._questions[key], self.question_len, self.pad_token_id)
        value = self.value_text(values[q])
        answer, answer_mask = _padded(self._answer_ids(value), self.answer_len, self.pad_token_id)
        return {
            "context_ids": context, "context_mask": context_mask,
            "question_ids": question, "question_mask": question_mask,
            "answer_ids": answer, "answer_mask": answer_mask,
            "evidence_mask": evidence,
            "answer_text": value, "answers": [value],
        }

    def example(self, index: int) -> dict[str, str]:
        """Sample ``index`` as text: ``context``, ``question``, ``answer`` (decoded, padding dropped)."""
        s = self[index]
        dec = self.tokenizer.decode
        return {"context": dec(s["context_ids"][s["context_mask"]].tolist()),
                "question": dec(s["question_ids"][s["question_mask"]].tolist()),
                "answer": s["answer_text"]}


# -- qa_jsonl ----------------------------------------------------------------------------------
_FIELDS = ("input", "prompt", "answer")


def _check_record(record: Any) -> tuple[str, str, list[str]] | tuple[str, str]:
    """``(input, prompt, answers)``, or ``(reason, detail)`` for a record that cannot be used."""
    if not isinstance(record, dict):
        return "malformed_json", f"a record must be a JSON object, not a {type(record).__name__}"
    for name in _FIELDS:
        if name not in record:
            keys = ", ".join(sorted(record)[:8]) or "none"
            return "missing_field", f"no field {name!r} (fields: {keys}); qa_jsonl needs input, prompt and answer"
        if record[name] is None:
            return "missing_field", f"field {name!r} is null"
    for name in ("input", "prompt"):
        if not isinstance(record[name], str):
            return "not_text", f"field {name!r} is a {type(record[name]).__name__}, not a string"
        if not record[name].strip():
            return "empty_document", f"field {name!r} is empty or whitespace only"
    answer = record["answer"]
    answers = [answer] if isinstance(answer, str) else answer
    if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
        return "not_text", f"field 'answer' must be a string or a non-empty list of strings, not {json.dumps(answer)[:60]}"
    answers = [a.strip() for a in answers]
    if not answers[0]:
        return "empty_document", "the first answer (the training target) is empty or whitespace only"
    return record["input"], record["prompt"], [a for a in answers if a]


def read_qa_records(src) -> Any:
    """Yield ``(line, input, prompt, answers)`` or ``(line, reason, detail)`` for one JSONL source."""
    from data_pipelines.sources import LongLine, Truncated, _decompressed, iter_lines

    with src.fs.open(src.path, "rb") as raw:
        stream = _decompressed(raw, src.compression)
        line_no = 0
        try:
            for line in iter_lines(stream):
                line_no += 1
                if isinstance(line, LongLine):
                    yield line_no, "line_too_long", line.detail
                    continue
                if not line.strip():
                    continue
                try:
                    text = line.decode("utf-8")
                except UnicodeDecodeError as exc:
                    yield line_no, "not_utf8", f"byte {exc.start}: {exc.reason}"
                    continue
                try:
                    record = json.loads(text)
                except json.JSONDecodeError as exc:
                    yield line_no, "malformed_json", f"{exc.msg} at column {exc.colno}"
                    continue
                yield (line_no, *_check_record(record))
        except Truncated as exc:
            yield line_no + 1, "truncated_compressed_file", exc.detail


def _first_occurrence(hay: np.ndarray, needles: Sequence[np.ndarray]) -> tuple[int, int] | None:
    """``(start, end)`` of the earliest occurrence of any needle in ``hay`` (the longer one on a tie)."""
    best = None
    for needle in needles:
        m = needle.size
        if m == 0 or m > hay.size:
            continue
        starts = np.flatnonzero(hay[:hay.size - m + 1] == needle[0])
        if best is not None:
            starts = starts[starts <= best[0]]
        if starts.size == 0:
            continue
        match = (hay[starts[:, None] + np.arange(m)] == needle).all(axis=1)
        if match.any():
            s = int(starts[int(match.argmax())])
            if best is None or s < best[0] or (s == best[0] and s + m > best[1]):
                best = (s, s + m)
    return best


class QAJsonl:
    """Long-context QA from JSONL ``{"input", "prompt", "answer"}`` records (the RAM/COMI format).

    ``QAJsonl(path, tokenizer, seq_len)``; samples as in the module docstring. Records are read
    and tokenized once, here (fine for QA sets of up to some 100K records). A context longer than
    ``seq_len`` keeps its first ``seq_len`` tokens (counted in ``.truncated``); a question longer
    than ``question_len`` keeps its start and the "\\nAnswer:" cue (``.truncated_questions``); an
    answer longer than ``answer_len`` keeps its start and the eos (``.truncated_answers``).
    ``evidence_mask`` marks the earliest occurrence in the (kept) context of any answer's tokens,
    tokenized with and without a leading space; all False when none occurs.

    ``on_bad_record``: "fail" raises :class:`BadRecordError` naming ``file:line`` and the reason;
    "skip" drops the record and counts it in ``.skipped`` (reason -> count).
    ``num_samples`` keeps a seeded random subset of that many records (``seed`` picks it).
    ``.locations[i]`` is the ``(uri, line)`` of sample ``i``.
    """

    def __init__(self, path, tokenizer, seq_len: int, question_len: int = 64, answer_len: int = 32,
                 on_bad_record: str = "fail", num_samples: int | None = None, seed: int = 0,
                 storage_options: dict | None = None):
        from data_pipelines.sources import expand_sources

        _check_int("seq_len", seq_len, 1, 4096)
        _check_int("answer_len", answer_len, 2, 32)
        _check_int("seed", seed, 0, 0)
        require(on_bad_record in ON_BAD_RECORD, f"on_bad_record={on_bad_record!r} is unknown: use 'fail' (stop at the "
                                                "first bad record) or 'skip' (drop and count bad records).")
        require(path is not None and path != [] and path != "",
                "qa_jsonl needs path=: a JSONL file, folder, glob or fsspec URI (or a list of them).")
        self.tokenizer = tokenizer
        self.seq_len, self.question_len, self.answer_len = seq_len, question_len, answer_len
        self.eos_token_id, self.pad_token_id = _special_ids(tokenizer)
        self._suffix = _encode(tokenizer, [_wrap_question("")[len("Question: "):]])[0]  # "\nAnswer:"
        shortest = _encode(tokenizer, ["Question:"])[0].size + self._suffix.size + 1
        _check_int("question_len", question_len, 1, 64)
        require(question_len >= shortest,
                f"question_len={question_len} is too short for {QUESTION_TEMPLATE!r} around any question: it needs "
                f"{shortest} tokens for the frame and one question token. Use question_len >= {max(shortest, 16)}.")

        self.skipped: dict[str, int] = {}
        locations, contexts, prompts, answers = [], [], [], []
        for src in expand_sources(path, storage_options=storage_options):
            if src.format != "jsonl":
                raise DataConfigError(f"{src.uri!r} is {src.format}, but qa_jsonl reads JSON Lines ({{input, prompt, "
                                      "answer}} per line, optionally .gz/.zst/.bz2/.xz): convert it or point at .jsonl files.")
            for line, *rest in read_qa_records(src):
                if len(rest) == 2:
                    reason, detail = rest
                    if on_bad_record == "fail":
                        raise BadRecordError(src.uri, line, reason, detail)
                    self.skipped[reason] = self.skipped.get(reason, 0) + 1
                    continue
                locations.append((src.uri, line))
                contexts.append(rest[0])
                prompts.append(rest[1])
                answers.append(rest[2])
        require(len(contexts) > 0, f"qa_jsonl path={path!r} holds no usable records"
                + (f" (skipped: {self.skipped})" if self.skipped else "") + ". Check the files and their fields.")
        if num_samples is not None:
            require(isinstance(num_samples, int) and not isinstance(num_samples, bool) and 0 < num_samples <= len(contexts),
                    f"num_samples={num_samples!r} must be an int in [1, {len(contexts)}]: {path!r} holds {len(contexts)} "
                    "usable records. Leave num_samples unset to use them all.")
            keep = np.sort(np.random.default_rng([int(seed), _SUBSET_SALT]).choice(len(contexts), num_samples, replace=False))
            pick = keep.tolist()
            locations, contexts = [locations[i] for i in pick], [contexts[i] for i in pick]
            prompts, answers = [prompts[i] for i in pick], [answers[i] for i in pick]
        self.locations: list[tuple[str, int]] = locations
        self.answers: list[list[str]] = answers

        self.truncated = self.truncated_questions = self.truncated_answers = 0
        self._contexts: list[np.ndarray] = []
        for at in range(0, len(contexts), 64):  # bounded memory: full token lists of 64 contexts at a time
            for ids in _encode(tokenizer, contexts[at:at + 64]):
                if ids.size > seq_len:
                    self.truncated += 1
                    ids = ids[:seq_len]
                self._contexts.append(ids.astype(np.int32))
        self._questions = []
        for prompt, ids in zip(prompts, _encode(tokenizer, [_wrap_question(p) for p in prompts])):
            if ids.size > question_len:
                self.truncated_questions += 1
                head = _encode(tokenizer, ["Question: " + prompt])[0]
                ids = np.concatenate([head[:question_len - self._suffix.size], self._suffix])
            self._questions.append(ids)
        self._answers = []
        for ids in _encode(tokenizer, [" " + a[0] for a in answers]):
            if ids.size > answer_len - 1:
                self.truncated_answers += 1
                ids = ids[:answer_len - 1]
            self._answers.append(np.concatenate([ids, [self.eos_token_id]]).astype(np.int64))
        flat = [(i, text) for i, alts in enumerate(answers) for a in alts for text in (a, " " + a)]
        self._needles: list[list[np.ndarray]] = [[] for _ in answers]
        for (i, _), ids in zip(flat, _encode(tokenizer, [t for _, t in flat])):
            self._needles[i].append(ids)

    def __len__(self) -> int:
        return len(self._contexts)

    def __getitem__(self, index: int) -> dict[str, Any]:
        i = _check_index(index, len(self))
        ctx = self._contexts[i].astype(np.int64)
        context, context_mask = _padded(ctx, self.seq_len, self.pad_token_id)
        evidence = torch.zeros(self.seq_len, dtype=torch.bool)
        span = _first_occurrence(ctx, self._needles[i])
        if span is not None:
            evidence[span[0]:span[1]] = True
        question, question_mask = _padded(self._questions[i], self.question_len, self.pad_token_id)
        answer, answer_mask = _padded(self._answers[i], self.answer_len, self.pad_token_id)
        return {
            "context_ids": context, "context_mask": context_mask,
            "question_ids": question, "question_mask": question_mask,
            "answer_ids": answer, "answer_mask": answer_mask,
            "evidence_mask": evidence,
            "answer_text": self.answers[i][0], "answers": list(self.answers[i]),
        }
