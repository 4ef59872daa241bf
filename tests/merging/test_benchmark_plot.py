"""benchmarks/merging_tasks.py draws its figure from a recorded result (--plot-only), and the docs show it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RESULT = REPO / "benchmarks" / "results" / "merging_tasks.json"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("merging_tasks", REPO / "benchmarks" / "merging_tasks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_plot_only_draws_a_png_from_the_recorded_json(bench, tmp_path, capsys):
    out = tmp_path / "fig" / "merging_tasks.png"
    assert bench.main(["--plot-only", str(RESULT), "--plot", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    assert bench.main(["--plot-only", str(tmp_path / "none.json")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_the_docs_show_the_figure():
    assert (REPO / "docs" / "img" / "merging_tasks.png").is_file()
    page = (REPO / "docs" / "merging.md").read_text()
    assert "](img/merging_tasks.png)" in page
    assert "--plot-only benchmarks/results/merging_tasks.json --plot docs/img/merging_tasks.png" in page
