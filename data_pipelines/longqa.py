"""Long-context question answering samples as text, made offline: BABILong-style bAbI tasks in a natural haystack,
multi-needle and multi-value needles, or any JSONL of ``{context, question, answers}``.

    samples = make_samples("qa2", tokenizer, length=4096, n=8, seed=0)   # [LongQASample, ...]

- ``qa1`` .. ``qa5`` follow bAbI's first five tasks (single, two and three supporting facts, two- and three-argument
  relations). Their facts are spread, in order, at random places of a stretch of the shipped novels, as BABILong
  does with PG-19, so that the context is ``length`` tokens of the model's tokenizer (within a sentence).
- ``multi_needle``: ``"The special magic number for <key> is: <value>."`` for several keys; one is asked.
- ``multi_value``: one key gets several values at different depths; all are asked, in order.
- ``jsonl:PATH``: records with ``context``, ``question`` and ``answers`` (a string or a list); ``length`` then only
  names the bucket, the context is the record's.

Every sample is a pure function of (task, length, seed, index), so two models see the same samples.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from functools import lru_cache

from data_pipelines.errors import DataConfigError

BABI_TASKS = ("qa1", "qa2", "qa3", "qa4", "qa5")
NEEDLE_TASKS = ("multi_needle", "multi_value")
TASKS = BABI_TASKS + NEEDLE_TASKS
PEOPLE = ("Mary", "John", "Daniel", "Sandra", "Bill", "Fred", "Julie", "Jeff")
PLACES = ("kitchen", "garden", "office", "hallway", "bathroom", "bedroom", "cellar", "balcony")
OBJECTS = ("apple", "football", "milk", "cake", "book", "lantern")
MOVES = ("went to", "travelled to", "journeyed to", "moved to")
DIRECTIONS = ("north", "south", "east", "west")
KEYS = ("amber", "cobalt", "falcon", "garnet", "juniper", "kestrel", "meadow", "onyx", "quartz", "saffron")


@dataclass
class LongQASample:
    task: str
    context: str
    question: str
    answers: list[str]
    facts: list[str] = field(default_factory=list)


def _qa1(rng: random.Random):
    people = rng.sample(PEOPLE, 3)
    where, facts = {}, []
    for _ in range(rng.randint(4, 7)):
        who, place = rng.choice(people), rng.choice(PLACES)
        where[who] = place
        facts.append(f"{who} {rng.choice(MOVES)} the {place}.")
    who = rng.choice(sorted(where))
    return facts, f"Where is {who}?", [where[who]]


def _carry(rng: random.Random, min_moves: int):
    """A person picks an object up and carries it through `min_moves`+ places; others move around meanwhile."""
    holder, other = rng.sample(PEOPLE, 2)
    thing = rng.choice(OBJECTS)
    places = [rng.choice(PLACES)]
    facts = [f"{holder} {rng.choice(MOVES)} the {places[0]}.", f"{holder} picked up the {thing}."]
    while len(places) < min_moves + 1:
        place = rng.choice([p for p in PLACES if p != places[-1]])
        places.append(place)
        if rng.random() < 0.5:
            facts.append(f"{other} {rng.choice(MOVES)} the {rng.choice(PLACES)}.")
        facts.append(f"{holder} {rng.choice(MOVES)} the {place}.")
    return facts, thing, places


def _qa2(rng: random.Random):
    facts, thing, places = _carry(rng, 1)
    return facts, f"Where is the {thing}?", [places[-1]]


def _qa3(rng: random.Random):
    facts, thing, places = _carry(rng, 2)
    return facts, f"Where was the {thing} before the {places[-1]}?", [places[-2]]


def _qa4(rng: random.Random):
    a, b, c = rng.sample(PLACES, 3)
    d1, d2 = rng.sample(DIRECTIONS, 2)
    facts = [f"The {a} is {d1} of the {b}.", f"The {c} is {d2} of the {b}."]
    rng.shuffle(facts)
    ask_first = rng.random() < 0.5
    return facts, f"What is {d1 if ask_first else d2} of the {b}?", [a if ask_first else c]


def _qa5(rng: random.Random):
    giver, taker, other = rng.sample(PEOPLE, 3)
    thing, other_thing = rng.sample(OBJECTS, 2)
    facts = [f"{other} gave the {other_thing} to {giver}.", f"{giver} gave the {thing} to {taker}."]
    kind = rng.randrange(3)
    if kind == 0:
        return facts, f"Who gave the {thing} to {taker}?", [giver]
    if kind == 1:
        return facts, f"Who received the {thing}?", [taker]
    return facts, f"What did {giver} give to {taker}?", [thing]


def _multi_needle(rng: random.Random):
    keys = rng.sample(KEYS, 4)
    values = [str(rng.randrange(1_000_000, 10_000_000)) for _ in keys]
    facts = [f"The special magic number for {k} is: {v}." for k, v in zip(keys, values)]
    rng.shuffle(facts)
    asked = rng.randrange(len(keys))
    return facts, f"What is the special magic number for {keys[asked]}?", [values[asked]]


def _multi_value(rng: random.Random):
    key = rng.choice(KEYS)
    values = [str(rng.randrange(1_000_000, 10_000_000)) for _ in range(3)]
    facts = [f"One of the special magic numbers for {key} is: {v}." for v in values]
    return facts, f"What are all the special magic numbers for {key}? List them in order.", [", ".join(values)]


_MAKERS = {"qa1": _qa1, "qa2": _qa2, "qa3": _qa3, "qa4": _qa4, "qa5": _qa5, "multi_needle": _multi_needle,
           "multi_value": _multi_value}


@lru_cache(maxsize=1)
def _novel_sentences() -> tuple[str, ...]:
    from data_pipelines.corpus import shipped_documents

    text = " ".join(doc["text"] for doc in shipped_documents())
    return tuple(s for s in re.split(r"(?<=[.!?])\s+", re.sub(r"\s+", " ", text)) if 3 <= len(s.split()) <= 80)


def _haystack(facts: list[str], tokens: int, tokenizer, rng: random.Random) -> str:
    """The facts, in order, at random places among consecutive novel sentences, about `tokens` tokens in all."""
    sentences = _novel_sentences()
    start = rng.randrange(len(sentences))
    budget = tokens - sum(len(tokenizer(f, add_special_tokens=False)["input_ids"]) + 1 for f in facts)
    filler, used, i = [], 0, start
    while used < budget:
        sentence = sentences[i % len(sentences)]
        cost = len(tokenizer(sentence, add_special_tokens=False)["input_ids"]) + 1
        if used + cost > budget and filler:
            break
        filler.append(sentence)
        used += cost
        i += 1
    slots = sorted(rng.randrange(len(filler) + 1) for _ in facts)
    out, k = [], 0
    for pos in range(len(filler) + 1):
        while k < len(facts) and slots[k] == pos:
            out.append(facts[k])
            k += 1
        if pos < len(filler):
            out.append(filler[pos])
    return " ".join(out)


def _jsonl(path: str, n: int) -> list[LongQASample]:
    import fsspec

    samples = []
    with fsspec.open(path, "rt", encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                context, question, answers = record["context"], record["question"], record["answers"]
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise DataConfigError(f"{path}:{line_no}: a longqa record needs JSON with 'context', 'question' and "
                                      f"'answers' ({type(err).__name__}: {err}). Fix: write one such object per line")
            answers = [answers] if isinstance(answers, str) else [str(a) for a in answers]
            samples.append(LongQASample("jsonl", str(context), str(question), answers))
            if len(samples) == n:
                break
    if not samples:
        raise DataConfigError(f"{path} holds no longqa record. Fix: one JSON object per line with 'context', "
                              "'question' and 'answers'")
    return samples


def make_samples(task: str, tokenizer, length: int, n: int, seed: int = 0) -> list[LongQASample]:
    """`n` samples of `task` whose contexts are about `length` tokens of `tokenizer`."""
    if task.startswith("jsonl:"):
        return _jsonl(task[len("jsonl:"):], n)
    if task not in _MAKERS:
        raise DataConfigError(f"longqa task {task!r} is unknown: use one of {', '.join(TASKS)}, or jsonl:PATH")
    if not isinstance(length, int) or length < 64:
        raise DataConfigError(f"length={length!r} is too short for a longqa context: use at least 64 tokens")
    samples = []
    for index in range(n):
        rng = random.Random(f"{task}/{length}/{seed}/{index}")
        facts, question, answers = _MAKERS[task](rng)
        samples.append(LongQASample(task, _haystack(facts, length, tokenizer, rng), question, answers, facts))
    return samples
