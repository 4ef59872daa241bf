"""The benchmark page's numbers are rendered from benchmarks/results/*.json."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "benchmarks" / "results"


@pytest.fixture(scope="module")
def gen():
    spec = importlib.util.spec_from_file_location("gen_benchmarks", REPO / "docs" / "hooks" / "gen_benchmarks.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def page(gen):
    return gen.render((REPO / "docs" / "benchmarks.md").read_text())


def _j(name):
    return json.loads((RESULTS / f"{name}.json").read_text())


def test_no_placeholder_left(page):
    assert "{{" not in page and "}}" not in page


def test_comet_memory_numbers(page):
    d = _j("comet_memory")
    for row in d["rows"]:
        c = row["comet"]
        line = next(l for l in page.splitlines() if l.startswith(f"| {row['prefix_tokens']:,} |"))
        assert f"| {c['peak_rss_mb']:,.0f} | {c['prefill_ms_per_token']:.2f} | {c['decode_ms_per_token']:.1f} |" in line
    assert f"{d['training']['s_per_chunk']:.1f} s per chunk" in page
    assert f"{d['checks']['peak_rss_ratio_longest_vs_shortest'] - 1:.1%} above 4k" in page


def test_swat_passkey_compression_data_numbers(page):
    s = _j("swat_length")
    row = next(l for l in page.splitlines() if l.startswith("| `vanilla`"))
    assert f"{s['loss_by_length']['vanilla']['8192']:.3f}" in row
    p = _j("passkey_tiny")
    row = next(l for l in page.splitlines() if l.startswith("| `passkey_tiny.json`"))
    assert f"| {p['accuracy']['8192']:.2f} | {p['accuracy']['32768']:.2f} |" in row
    assert p["run"]["evaluation_command"] in page
    d = _j("data")
    assert f"{d['prepare']['tokens_per_s']:,}" in page
    c = _j("compression_qa_curriculum")
    assert re.search(r"\| ram \| " + re.escape(f"{c['exact_match']['ram']['4']:.2f}"), page)


def test_a_changed_json_changes_the_page(gen, tmp_path):
    for p in RESULTS.glob("*.json"):
        (tmp_path / p.name).write_text(p.read_text())
    d = _j("comet_memory")
    d["training"]["s_per_chunk"] = 123.456
    (tmp_path / "comet_memory.json").write_text(json.dumps(d))
    out = gen.render((REPO / "docs" / "benchmarks.md").read_text(), results=tmp_path)
    assert "123.5 s per chunk" in out


def test_a_bad_placeholder_fails(gen):
    with pytest.raises(ValueError, match="no_such_key"):
        gen.render("{{ R.comet_memory.no_such_key }}")


def test_every_docs_page_renders(gen):
    """Every page of the site goes through the hook: each placeholder on it must evaluate."""
    pages = sorted((REPO / "docs").rglob("*.md"))
    assert len(pages) > 10
    for path in pages:  # a literal "}}" (a dict in a code block) is fine; "{{" is always a placeholder
        assert "{{" not in gen.render(path.read_text()), path.relative_to(REPO)
