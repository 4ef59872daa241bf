"""QA data kinds for context compression (RAM, COMI): qa_facts (synthetic) and qa_jsonl (RAM/COMI JSONL)."""

import gzip
import json
import re

import pytest
import torch

from data_pipelines import BadRecordError, DataConfigError, build_source
from data_pipelines.loader import RankBatches, collate
from data_pipelines.qa import QAFacts, QAJsonl, builtin_keys

FACT = re.compile(r" ([a-z]+): (\d+)\.")


@pytest.fixture(scope="module")
def facts(tok):
    return build_source({"kind": "qa_facts", "seq_len": 300, "num_samples": 64, "seed": 1}, tok)


@pytest.fixture(scope="module")
def facts_distract(tok):
    return build_source({"kind": "qa_facts", "seq_len": 300, "num_samples": 32, "distractors": 3}, tok)


def masked_text(tok, ids, mask):
    return tok.decode(ids[mask].tolist())


def check_layout(s, seq_len, question_len, answer_len):
    assert set(s) == {"context_ids", "context_mask", "question_ids", "question_mask", "answer_ids", "answer_mask",
                      "evidence_mask", "answer_text", "answers"}
    for key, length in (("context", seq_len), ("question", question_len), ("answer", answer_len)):
        assert s[f"{key}_ids"].dtype == torch.long and s[f"{key}_ids"].shape == (length,)
        assert s[f"{key}_mask"].dtype == torch.bool and s[f"{key}_mask"].shape == (length,)
        n = int(s[f"{key}_mask"].sum())
        assert s[f"{key}_mask"][:n].all() and not s[f"{key}_mask"][n:].any()  # left-aligned
    assert s["evidence_mask"].dtype == torch.bool and s["evidence_mask"].shape == (seq_len,)
    assert not (s["evidence_mask"] & ~s["context_mask"]).any()
    assert isinstance(s["answer_text"], str) and s["answers"][0] == s["answer_text"]


# -- qa_facts ----------------------------------------------------------------------------------
def test_builtin_keys_are_distinct_single_token_words(tok):
    keys = builtin_keys(tok)
    assert len(keys) >= 1000 and len(set(keys)) == len(keys) and list(keys) == sorted(keys)
    assert all(k.isalpha() and k.islower() and len(k) >= 3 for k in keys)
    assert "value" not in keys and "abomin" not in keys  # template words and BPE fragments are left out
    assert all(len(ids) == 1 for ids in tok([" " + k for k in keys[::50]], add_special_tokens=False)["input_ids"])


def test_qa_facts_sample_holds_the_queried_fact_as_evidence(tok, facts):
    for i in range(6):
        s = facts[i]
        check_layout(s, 300, 32, 12)
        key, value = facts.query(i)
        assert s["answer_text"] == value and s["answers"] == [value] and len(value) == 5 and value.isdigit()
        evidence = masked_text(tok, s["context_ids"], s["evidence_mask"])
        assert evidence == f" {key}: {value}." and evidence.strip() == f"{key}: {value}."
        ev = s["evidence_mask"].nonzero().flatten()
        assert ev.tolist() == list(range(int(ev[0]), int(ev[-1]) + 1))  # one contiguous span
        context = masked_text(tok, s["context_ids"], s["context_mask"])
        pairs = FACT.findall(context)
        assert "".join(f" {k}: {v}." for k, v in pairs) == context  # whole facts only
        keys = [k for k, _ in pairs]
        assert len(set(keys)) == len(keys) > 20  # distinct keys
        assert [v for k, v in pairs if k == key] == [value]  # the value appears exactly once after the queried key
        assert sum(v == value for _, v in pairs) == 1  # no other fact has the answer's value (distractors=0)
        fact_len = 9  # " key" ":" " " 5 digits "."
        assert int(s["context_mask"].sum()) == len(pairs) * fact_len == 300 // fact_len * fact_len
        assert (s["context_ids"][~s["context_mask"]] == tok.pad_token_id).all()
        assert tok(context, add_special_tokens=False)["input_ids"] == s["context_ids"][s["context_mask"]].tolist()
        assert masked_text(tok, s["question_ids"], s["question_mask"]) == f"Question: What is the value of {key}?\nAnswer:"
        answer = s["answer_ids"][s["answer_mask"]].tolist()
        assert answer[-1] == tok.eos_token_id and tok.decode(answer[:-1]) == f" {value}"


def test_qa_facts_is_deterministic_and_varies(tok, facts):
    again = QAFacts(tok, seq_len=300, num_samples=64, seed=1)
    other_seed = QAFacts(tok, seq_len=300, num_samples=64, seed=2)
    for i in (0, 5, 63, -1):
        a, b = facts[i], again[i]
        assert all(torch.equal(a[k], b[k]) for k in a if isinstance(a[k], torch.Tensor)) and a["answers"] == b["answers"]
    assert not torch.equal(facts[0]["context_ids"], facts[1]["context_ids"])
    assert not torch.equal(facts[0]["context_ids"], other_seed[0]["context_ids"])
    spots = [facts.draw(i)["query"] / len(facts.draw(i)["keys"]) for i in range(64)]
    assert min(spots) < 0.25 and max(spots) > 0.75  # the queried fact lands anywhere in the context
    with pytest.raises(IndexError):
        facts[64]


def test_qa_facts_batches_stack(tok, facts):
    batch = collate([facts[i] for i in range(4)])
    assert batch["context_ids"].shape == batch["evidence_mask"].shape == (4, 300)
    assert batch["question_ids"].shape == (4, 32) and batch["answer_mask"].shape == (4, 12)
    assert batch["answer_text"] == [facts[i]["answer_text"] for i in range(4)]
    assert batch["answers"] == [[facts[i]["answer_text"]] for i in range(4)]
    ranked = next(iter(RankBatches(facts, batch_size=3, rank=1, world_size=2, seed=0)))
    assert ranked["context_ids"].shape == (3, 300) and ranked["answer_ids"].shape == (3, 12)
    assert len(ranked["answers"]) == 3


def test_qa_facts_distractors_share_the_value_not_the_key(tok, facts_distract):
    for i in range(6):
        s = facts_distract[i]
        key, value = facts_distract.query(i)
        plan = facts_distract.draw(i)
        assert len(plan["distractors"]) == 3 and plan["query"] not in plan["distractors"].tolist()
        pairs = FACT.findall(masked_text(tok, s["context_ids"], s["context_mask"]))
        holders = [k for k, v in pairs if v == value]
        assert len(holders) == 4 and holders.count(key) == 1  # the queried fact and 3 near-duplicates
        assert [v for k, v in pairs if k == key] == [value]
        assert masked_text(tok, s["context_ids"], s["evidence_mask"]) == f" {key}: {value}."


def test_qa_facts_custom_keys_and_digits(tok):
    src = build_source({"kind": "qa_facts", "seq_len": 40, "num_samples": 5, "keys": ["amber", "cedar", "willow", "dune"],
                        "digits": 3, "answer_len": 6}, tok)
    s = src[2]
    check_layout(s, 40, 32, 6)
    pairs = FACT.findall(masked_text(tok, s["context_ids"], s["context_mask"]))
    assert len(pairs) == 5 - 1 and {k for k, _ in pairs} <= {"amber", "cedar", "willow", "dune"}  # 4 facts of 7 tokens
    assert all(len(v) == 3 for _, v in pairs)


def test_qa_facts_errors_name_the_fix(tok):
    with pytest.raises(DataConfigError, match=r"seq_len=8 is too short for one fact \(needs 9 tokens.*Use seq_len >= 9"):
        QAFacts(tok, seq_len=8)
    with pytest.raises(DataConfigError, match=r"question_len=8 is too short .*Use question_len >= 1\d"):
        QAFacts(tok, seq_len=64, question_len=8)
    with pytest.raises(DataConfigError, match=r"answer_len=6 is too short for a 5-digit answer \(needs 7 tokens"):
        QAFacts(tok, seq_len=64, answer_len=6)
    with pytest.raises(DataConfigError, match=r"distractors=3 needs 4 facts .* holds only 2"):
        QAFacts(tok, seq_len=20, distractors=3)
    with pytest.raises(DataConfigError, match="keys must be distinct"):
        QAFacts(tok, seq_len=20, keys=["amber", "amber"])
    with pytest.raises(DataConfigError, match=r"the 2 keys make facts of \d+ tokens in all.*Use seq_len <= \d+"):
        QAFacts(tok, seq_len=100, keys=["amber", "cedar"])
    with pytest.raises(DataConfigError, match="key 'amber:x' is invalid|keys \\['amber:x'\\] are invalid"):
        QAFacts(tok, seq_len=100, keys=["amber:x"])


# -- qa_jsonl ----------------------------------------------------------------------------------
RECORDS = [
    {"input": "The capital of France is Paris. It lies on the Seine.", "prompt": "What is the capital of France?",
     "answer": "Paris"},
    {"input": "Alice met Bob in Rome in the spring of 1999.", "prompt": "Where did Alice meet Bob?",
     "answer": ["  Rome ", "the Eternal City"]},
    {"input": "Nothing here mentions the answer at all.", "prompt": "Who wrote Emma?", "answer": ["Jane Austen"]},
    {"input": "word " * 200 + "Finally, the secret is walnut.", "prompt": "What is the secret?", "answer": "walnut"},
]


def test_qa_jsonl_reads_records(tok, tmp_path, jsonl_writer):
    path = jsonl_writer(tmp_path / "qa.jsonl", RECORDS)
    src = build_source({"kind": "qa_jsonl", "path": path, "seq_len": 64, "question_len": 24, "answer_len": 8}, tok)
    assert len(src) == 4 and src.truncated == 1 and src.skipped == {}
    assert src.locations == [(path, 1), (path, 2), (path, 3), (path, 4)]
    samples = [src[i] for i in range(4)]
    for s in samples:
        check_layout(s, 64, 24, 8)
    paris, rome, austen, secret = samples
    assert paris["answer_text"] == "Paris" and paris["answers"] == ["Paris"]
    assert masked_text(tok, paris["context_ids"], paris["context_mask"]) == RECORDS[0]["input"]
    assert masked_text(tok, paris["question_ids"], paris["question_mask"]) == "Question: What is the capital of France?\nAnswer:"
    answer = paris["answer_ids"][paris["answer_mask"]].tolist()
    assert answer[-1] == tok.eos_token_id and tok.decode(answer[:-1]) == " Paris"
    assert masked_text(tok, paris["context_ids"], paris["evidence_mask"]).strip() == "Paris"
    assert rome["answer_text"] == "Rome" and rome["answers"] == ["Rome", "the Eternal City"]
    assert masked_text(tok, rome["context_ids"], rome["evidence_mask"]).strip() == "Rome"
    assert not austen["evidence_mask"].any()  # not in the context
    assert secret["context_mask"].all()  # truncated to the first 64 tokens...
    assert not secret["evidence_mask"].any()  # ...which do not hold the answer
    assert masked_text(tok, secret["context_ids"], secret["context_mask"]).startswith("word word")
    batch = collate(samples)
    assert batch["context_ids"].shape == (4, 64) and batch["answers"][1] == ["Rome", "the Eternal City"]
    ranked = next(iter(RankBatches(src, batch_size=2, seed=3)))
    assert ranked["question_ids"].shape == (2, 24)


def test_qa_jsonl_truncates_questions_and_answers(tok, tmp_path, jsonl_writer):
    record = {"input": "Some context about a long list.", "prompt": "Please list " + "many things, " * 30 + "now?",
              "answer": "one two three four five six seven eight nine ten eleven twelve"}
    src = QAJsonl(jsonl_writer(tmp_path / "long.jsonl", [record]), tok, seq_len=32, question_len=16, answer_len=6)
    s = src[0]
    assert src.truncated == 0 and src.truncated_questions == 1 and src.truncated_answers == 1
    assert s["question_mask"].all() and s["answer_mask"].all()
    question = masked_text(tok, s["question_ids"], s["question_mask"])
    assert question.startswith("Question: Please list") and question.endswith("\nAnswer:")
    assert s["answer_ids"][-1] == tok.eos_token_id and tok.decode(s["answer_ids"][:-1].tolist()) == " one two three four five"
    assert s["answer_text"] == record["answer"]  # the full text is kept for scoring
    with pytest.raises(DataConfigError, match="question_len=4 is too short"):
        QAJsonl(src.locations[0][0], tok, seq_len=32, question_len=4)


def test_qa_jsonl_reads_gzip_and_memory_uris(tok, tmp_path, jsonl_writer, memfs):
    plain = build_source({"kind": "qa_jsonl", "path": jsonl_writer(tmp_path / "qa.jsonl", RECORDS), "seq_len": 64}, tok)
    gz = build_source({"kind": "qa_jsonl", "path": jsonl_writer(tmp_path / "qa.jsonl.gz", RECORDS, gzip.open),
                       "seq_len": 64}, tok)
    fs, root = memfs
    jsonl_writer(f"{root}/shard-0.jsonl", RECORDS[:2], fs.open)
    jsonl_writer(f"{root}/shard-1.jsonl", RECORDS[2:], fs.open)
    mem = build_source({"kind": "qa_jsonl", "path": root, "seq_len": 64}, tok)
    assert len(plain) == len(gz) == len(mem) == 4
    assert mem.locations[2] == (f"{root}/shard-1.jsonl", 1)
    for i in range(4):
        a, b, c = plain[i], gz[i], mem[i]
        for key in a:
            if isinstance(a[key], torch.Tensor):
                assert torch.equal(a[key], b[key]) and torch.equal(a[key], c[key])
            else:
                assert a[key] == b[key] == c[key]


def test_qa_jsonl_bad_records_fail_or_skip(tok, tmp_path, jsonl_writer):
    lines = [RECORDS[0], b'{"input": "broken', {"input": "x", "prompt": "q?"}, {"input": "x", "prompt": 3, "answer": "a"},
             {"input": "x", "prompt": "q?", "answer": [1]}, {"input": "   ", "prompt": "q?", "answer": "a"}, RECORDS[1]]
    path = jsonl_writer(tmp_path / "bad.jsonl", lines)
    with pytest.raises(BadRecordError, match=re.escape(f"{path}:2: malformed_json")) as info:
        build_source({"kind": "qa_jsonl", "path": path, "seq_len": 64}, tok)
    assert info.value.line == 2 and "on_bad_record='skip'" in str(info.value)
    second = jsonl_writer(tmp_path / "b2.jsonl", lines[:1] + lines[2:])
    with pytest.raises(BadRecordError, match=re.escape(f"{second}:2: missing_field: no field 'answer'")):
        build_source({"kind": "qa_jsonl", "path": second, "seq_len": 64}, tok)
    src = build_source({"kind": "qa_jsonl", "path": path, "seq_len": 64, "on_bad_record": "skip"}, tok)
    assert len(src) == 2 and [line for _, line in src.locations] == [1, 7]
    assert src.skipped == {"malformed_json": 1, "missing_field": 1, "not_text": 2, "empty_document": 1}
    assert src[1]["answer_text"] == "Rome"


def test_qa_jsonl_num_samples_is_a_seeded_subset(tok, tmp_path, jsonl_writer):
    records = [{"input": f"Fact {i}: the code is {i}.", "prompt": "What is the code?", "answer": str(i)} for i in range(20)]
    path = jsonl_writer(tmp_path / "many.jsonl", records)
    a = QAJsonl(path, tok, seq_len=32, num_samples=5, seed=1)
    b = QAJsonl(path, tok, seq_len=32, num_samples=5, seed=1)
    c = QAJsonl(path, tok, seq_len=32, num_samples=5, seed=2)
    assert len(a) == 5 and a.locations == b.locations != c.locations
    lines = [line for _, line in a.locations]
    assert lines == sorted(lines) and [a[i]["answer_text"] for i in range(5)] == [str(n - 1) for n in lines]
    with pytest.raises(DataConfigError, match=r"num_samples=21 must be an int in \[1, 20\]"):
        QAJsonl(path, tok, seq_len=32, num_samples=21)


# -- factory -----------------------------------------------------------------------------------
def test_factory_validates_qa_specs(tok, tmp_path):
    with pytest.raises(DataConfigError, match="unknown key 'question_length'. Did you mean 'question_len'"):
        build_source({"kind": "qa_facts", "seq_len": 64, "question_length": 32}, tok)
    with pytest.raises(DataConfigError, match="kind='qa_jsonl' needs 'path'"):
        build_source({"kind": "qa_jsonl", "seq_len": 64}, tok)
    with pytest.raises(DataConfigError, match="kind='qa_facts' needs 'seq_len'"):
        build_source({"kind": "qa_facts"}, tok)
    with pytest.raises(DataConfigError, match="distractors='2' must be an int"):
        build_source({"kind": "qa_facts", "seq_len": 64, "distractors": "2"}, tok)
    with pytest.raises(DataConfigError, match="does not take chunking"):
        build_source({"kind": "qa_facts", "seq_len": 64, "chunking": {"strategy": "fixed", "chunk_size": 16}}, tok)
    with pytest.raises(DataConfigError, match="on_bad_record='ignore' is unknown"):
        build_source({"kind": "qa_jsonl", "path": str(tmp_path), "seq_len": 64, "on_bad_record": "ignore"}, tok)
    with pytest.raises(DataConfigError, match="does not exist"):
        build_source({"kind": "qa_jsonl", "path": str(tmp_path / "missing.jsonl"), "seq_len": 64}, tok)


def test_qa_pairs_ask_the_sample_question_first_then_other_facts_of_its_context(tok, facts):
    for i in range(5):
        s, text = facts[i], facts.example(i)
        pairs = facts.qa_pairs(i, 4)
        assert len(pairs) == 4
        q0, a0 = pairs[0]
        assert q0.tolist() == s["question_ids"][s["question_mask"]].tolist()
        assert a0.tolist() == s["answer_ids"][s["answer_mask"]].tolist()
        keys = []
        for q, a in pairs:
            key = re.search(r"value of (\S+)\?", tok.decode(q.tolist())).group(1)
            value = tok.decode(a.tolist(), skip_special_tokens=True).strip()
            assert f" {key}: {value}." in text["context"]  # the fact is in this context
            keys.append(key)
        assert len(set(keys)) == 4
        assert [q.tolist() for q, _ in facts.qa_pairs(i, 4)] == [q.tolist() for q, _ in pairs]  # deterministic
    assert len(facts.qa_pairs(0, 10_000)) == len(facts.draw(0)["keys"])  # never more than the facts there are
