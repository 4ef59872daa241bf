"""The entropy_text kind: generated Markov-chain word sequences whose temperature sets their entropy."""

import math

import numpy as np
import pytest

from data_pipelines import DataConfigError, build_source
from data_pipelines.entropy_text import chain_entropy, vocabulary_words


def _spec(**kw):
    return {"kind": "entropy_text", "seq_len": 256, "num_samples": 40, **kw}


def _empirical_entropy(source, n=40):
    """Nats per token of the bigram counts pooled over n samples (the chain is first order)."""
    pairs = np.concatenate([np.stack([s[:-1], s[1:]], 1) for s in (source[i]["input_ids"].numpy() for i in range(n))])
    _, inverse = np.unique(pairs[:, 0], return_inverse=True)
    total = 0.0
    for state in np.unique(inverse):
        nxt = pairs[inverse == state, 1]
        _, counts = np.unique(nxt, return_counts=True)
        p = counts / counts.sum()
        total += counts.sum() * float(-(p * np.log(p)).sum())
    return total / len(pairs)


def test_samples_are_deterministic_words_of_the_tokenizer_in_the_text_format(tok):
    a, b = build_source(_spec(seed=3), tok), build_source(_spec(seed=3), tok)
    x = a[7]
    assert set(x) == {"input_ids", "labels", "document_ids"} and x["input_ids"].shape == (256,)
    assert (x["input_ids"] == b[7]["input_ids"]).all() and (x["labels"] == x["input_ids"]).all()
    assert not (a[7]["input_ids"] == a[8]["input_ids"]).all()
    assert not (build_source(_spec(seed=4), tok)[7]["input_ids"] == x["input_ids"]).all()
    words = set(vocabulary_words(tok))
    assert set(x["input_ids"].tolist()) <= words
    assert all(tok.decode([i]).startswith(" ") for i in x["input_ids"][:10].tolist())
    # another seed draws other samples of the same language; another chain_seed is another language
    same_chain = build_source(_spec(seed=4), tok)
    assert set(same_chain.word_ids.tolist()) == set(a.word_ids.tolist())
    assert set(build_source(_spec(chain_seed=1), tok).word_ids.tolist()) != set(a.word_ids.tolist())


def test_the_temperature_sets_the_measured_entropy(tok):
    measured = {t: _empirical_entropy(build_source(_spec(temperature=t), tok)) for t in (0.2, 1.0, 5.0)}
    assert measured[0.2] < measured[1.0] < measured[5.0], measured
    assert measured[0.2] < 1.5 and measured[5.0] > 3.5, measured   # log(64) = 4.16 nats is the uniform chain
    source = build_source(_spec(temperature=1.0), tok)
    assert abs(measured[1.0] - chain_entropy(source.scores, 1.0)) < 0.3   # what the source says it drew
    assert chain_entropy(source.scores, 1e3) == pytest.approx(math.log(64), abs=1e-2)


def test_a_temperature_range_is_drawn_per_sample(tok):
    source = build_source(_spec(temperature=[0.3, 3.0]), tok)
    temps = [source.temperature(i) for i in range(40)]
    assert all(0.3 <= t <= 3.0 for t in temps) and max(temps) / min(temps) > 3
    entropies = [source.entropy(i) for i in range(40)]
    assert max(entropies) - min(entropies) > 1.5
    low = min(range(40), key=lambda i: temps[i])
    high = max(range(40), key=lambda i: temps[i])
    distinct = [len(set(source[i]["input_ids"].tolist())) for i in (low, high)]
    assert distinct[0] < distinct[1]


@pytest.mark.parametrize("bad, needle", [
    ({"temperature": 0}, "temperature"), ({"temperature": [2.0, 1.0]}, "temperature"),
    ({"temperature": "hot"}, "temperature"), ({"words": 1}, "words"), ({"words": 1.5}, "words"),
    ({"temprature": 1.0}, "Did you mean 'temperature'"), ({"num_samples": 0}, "num_samples"),
])
def test_bad_keys_are_data_config_errors(tok, bad, needle):
    with pytest.raises(DataConfigError, match=needle):
        build_source(_spec(**bad), tok)


def test_too_many_words_names_how_many_the_tokenizer_has(tok):
    with pytest.raises(DataConfigError, match=r"words=100000 must be in \[2, \d+\]"):
        build_source(_spec(words=100_000), tok)
