"""data_pipelines.options: one dataclass per data kind is the one schema of a data spec."""

from __future__ import annotations

import dataclasses
import re

import pytest

from data_pipelines import DataConfigError, build_source
from data_pipelines.factory import KINDS, validate_spec
from data_pipelines.options import OPTIONS, ChunkingOptions, PasskeyOptions, QAFactsOptions, parse_spec


def test_every_field_of_every_kind_has_a_type_and_a_line_of_help():
    assert list(OPTIONS) == list(KINDS)
    for kind, cls in OPTIONS.items():
        for f in dataclasses.fields(cls):
            assert f.type and f.metadata.get("doc"), (kind, f.name)
            assert "\n" not in f.metadata["doc"]
        assert KINDS[kind] == {f.name: f.default for f in dataclasses.fields(cls)}
    for f in dataclasses.fields(ChunkingOptions):
        assert f.metadata.get("doc"), f.name


def test_parse_spec_gives_typed_options_with_defaults_and_validate_spec_the_complete_mapping():
    options = parse_spec({"kind": "passkey", "seq_len": 256, "chunking": {"strategy": "paper", "chunk_size": 32}})
    assert isinstance(options, PasskeyOptions) and options.digits == 5 and options.filler_start == "sentence"
    assert options.chunking == ChunkingOptions(strategy="paper", chunk_size=32, seed=0, min_chunk=4)
    spec = validate_spec({"kind": "qa_facts", "seq_len": 64})
    assert list(spec) == ["kind", *(f.name for f in dataclasses.fields(QAFactsOptions)), "chunking"]
    assert spec["chunking"] is None and spec["question_len"] == 32
    assert validate_spec(options)["chunking"] == {"strategy": "paper", "chunk_size": 32, "seed": 0, "min_chunk": 4}


@pytest.mark.parametrize("bad, needle", [
    ({"label_needle": "yes"}, "label_needle='yes' must be bool (got str)"),
    ({"depth": "half"}, "depth='half' must be float | None (got str)"),
    ({"filler": [1, "a"]}, "filler=[1, 'a'] must be str | list[int] | None"),
    ({"edge_depth_prob": True}, "edge_depth_prob=True must be float (got bool)"),
    ({"seed": 1.5}, "seed=1.5 must be an int (got float), e.g. 0"),
    ({"chunking": {"strategy": "paper", "chunk_size": "8"}}, "chunking.chunk_size='8' must be an int"),
    ({"chunking": {"strategy": "paper", "chunksize": 8}}, "Did you mean 'chunk_size'"),
    ({"seq_len": 1}, "seq_len=1 must be >= 2 tokens"),
])
def test_wrong_types_and_ranges_name_the_key_before_any_data_is_read(bad, needle):
    with pytest.raises(DataConfigError, match=re.escape(needle)):
        parse_spec({"kind": "passkey", "seq_len": 256, **bad})


def test_options_built_in_code_are_checked_too_and_build_the_source(tok):
    with pytest.raises(DataConfigError, match="digits='5' must be an int"):
        PasskeyOptions(seq_len=128, digits="5")
    options = PasskeyOptions(seq_len=128, num_samples=3, chunking={"strategy": "fixed", "chunk_size": 32})
    assert isinstance(options.chunking, ChunkingOptions)
    source = build_source(options, tok)
    assert len(source) == 3 and source[0]["chunk_ids"].shape == (128,)
    plain = build_source({"kind": "passkey", "seq_len": 128, "num_samples": 3,
                          "chunking": {"strategy": "fixed", "chunk_size": 32}}, tok)
    assert all((source[i]["input_ids"] == plain[i]["input_ids"]).all() for i in range(3))
