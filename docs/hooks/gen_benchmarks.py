"""Render benchmark numbers into the docs from ``benchmarks/results/*.json``, never by hand.

A page may hold placeholders ``{{ EXPR }}`` or ``{{ EXPR | FORMAT }}``. EXPR is a Python expression
evaluated with:

* ``R``: every ``benchmarks/results/<name>.json``, as ``R.<name>`` (attribute or ``[...]`` access;
  numeric keys with ``[...]``, e.g. ``R.swat_length.loss_by_length.vanilla["8192"]``);
* the table functions below (``comet_memory_table()``, ``swat_length_table()``, ...), which return
  whole Markdown tables, and ``machine(name)``, the machine line of one result file.
* the recipe pages' functions of ``recipe_pages.py`` (``shared_flags_table(recipe)``,
  ``recipe_flags(recipe)``, ``help_config(recipe, preset)``, ``presets_line(recipe)``,
  ``recipe_time(command)``), computed from the recipes' code and ``R.recipe_times``.

FORMAT is a :func:`format` spec (``.2f``, ``,.0f``, ``.1%``). The hook (``on_page_markdown``, wired in
``mkdocs.yml``) renders every page, so any page can cite a number this way. A placeholder that
does not evaluate fails the build, so a renamed key cannot leave a stale number behind.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

# mkdocs loads a hook by its path, so its folder may not be on sys.path: recipe_pages lives next to it
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
import recipe_pages  # noqa: E402  (the recipe pages' flags, presets, --help-config and times)

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "benchmarks" / "results"
PLACEHOLDER = re.compile(r"\{\{\s*(.+?)\s*(?:\|\s*([^{}|]*?)\s*)?\}\}", re.DOTALL)


class Node:
    """Attribute access over parsed JSON; leaves come back as plain Python values."""

    def __init__(self, data: Any, path: str):
        self._data, self._path = data, path

    def _wrap(self, value: Any, key: Any) -> Any:
        return Node(value, f"{self._path}.{key}") if isinstance(value, (dict, list)) else value

    def __getattr__(self, key: str) -> Any:
        if key.startswith("_"):
            raise AttributeError(key)
        return self[key]

    def __getitem__(self, key: Any) -> Any:
        try:
            return self._wrap(self._data[key], key)
        except (KeyError, IndexError, TypeError) as err:
            raise KeyError(f"{self._path} has no {key!r}") from err

    def __iter__(self):
        items = self._data if isinstance(self._data, list) else list(self._data)
        return (self._wrap(v, i) for i, v in enumerate(items)) if isinstance(self._data, list) else iter(items)

    def __len__(self) -> int:
        return len(self._data)

    def raw(self) -> Any:
        return self._data


def load_results(results: Path = RESULTS) -> Node:
    return Node({p.stem: json.loads(p.read_text()) for p in sorted(results.glob("*.json"))}, "R")


def _n(value: float | None, spec: str) -> str:
    return "" if value is None else format(value, spec)


def _table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def make_namespace(R: Node) -> dict[str, Any]:
    def machine(name: str) -> str:
        m = R[name].machine.raw()
        parts = [f"{m['cpus']} CPU cores" if "cpus" in m else None,
                 f"{m['threads']} torch thread{'s' * (m['threads'] != 1)}" if "threads" in m else None,
                 m.get("device", "cpu").upper() if "device" in m else None,
                 f"torch {m['torch']}" if "torch" in m else None,
                 f"Python {m['python']}" if "python" in m else None,
                 f"platform `{m['platform']}`" if "platform" in m else None,
                 f"1-minute load average {m['load_avg_1m_at_end']} at the end"
                 if m.get("load_avg_1m_at_end") is not None else None,
                 f"run on {m['date']}" if m.get("date") else None]
        return ", ".join(p for p in parts if p)

    def smollm2_lm_flat_table() -> str:
        rows = [[f"{r['length']:,}", str(r["docs"]), f"{r['tokens']:,}", _n(r["comet_ppl"], ".2f"),
                 _n(r["base_window_ppl"], ".2f"),
                 _n(r["base_full_ppl"], ".2f") if r["base_full_ppl"] is not None else "beyond its 8,192 positions",
                 _n(r["comet_over_base_window"], ".3f")] for r in R.smollm2_lm_flat.rows.raw()]
        return _table(["document length", "documents", "tokens scored", "CoMeT", "base, 512-token windows",
                       "base, full context", "CoMeT / windows"], rows)

    def comet_memory_table() -> str:
        rows = []
        for r in R.comet_memory.rows.raw():
            c, f = r["comet"], r.get("full_attention")
            row = [f"{r['prefix_tokens']:,}", _n(c["peak_rss_mb"], ",.0f"), _n(c["prefill_ms_per_token"], ".2f"),
                   _n(c["decode_ms_per_token"], ".1f")]
            if isinstance(f, dict) and "peak_rss_mb" in f:
                row += [_n(f["peak_rss_mb"], ",.0f"), _n(f["prefill_ms_per_token"], ".2f"),
                        _n(f["decode_ms_per_token"], ".1f")]
            elif isinstance(f, dict) and "failed" in f:
                row += [f"failed ({f['failed']})", "", ""]
            elif isinstance(f, dict) and "skipped" in f:
                row += [f"not run ({f['skipped']})", "", ""]
            else:
                row += ["not run", "", ""]
            rows.append(row)
        return _table(["prefix tokens", "CoMeT peak RSS (MB)", "CoMeT prefill (ms/token)", "CoMeT decode (ms/token)",
                       "full attention peak RSS (MB)", "full attention prefill (ms/token)",
                       "full attention decode (ms/token)"], rows)

    def swat_length_table() -> str:
        d = R.swat_length.raw()
        lengths = [str(x) for x in d["data"]["eval_lengths"]]
        rows = [[f"`{m}`: {d['models'][m]}", str(d["per_model"][m]["train_length"])]
                + [_n(d["loss_by_length"][m].get(L), ".3f") for L in lengths] for m in d["args"]["models"]]
        return _table(["model", "trained at"] + [f"loss at {int(L):,}" for L in lengths], rows)

    def passkey_table(*names: str) -> str:
        names = names or ("passkey_tiny", "passkey_tiny_no_gate", "passkey_tiny_no_temp")
        lengths = sorted({int(L) for n in names for L in R[n].accuracy.raw()})
        rows = []
        for n in names:
            d = R[n].raw()
            rows.append([f"`{n}.json`", f"`{d['model']}`"]
                        + [_n(d["accuracy"].get(str(L)), ".2f") for L in lengths] + [_n(d["overall_accuracy"], ".3f")])
        return _table(["result", "model"] + [f"accuracy at {L:,}" for L in lengths] + ["overall"], rows)

    def data_table() -> str:
        d = R.data.raw()
        rows = [["`longctx data prepare`", _n(d["prepare"]["seconds"], ".1f"), _n(d["prepare"]["tokens_per_s"], ",")],
                ["HF `datasets` map + group_texts", _n(d["baseline_hf_datasets_map_group_texts"]["seconds"], ".1f"),
                 _n(d["baseline_hf_datasets_map_group_texts"]["tokens_per_s"], ",")]]
        return _table(["tokenize " + f"{d['corpus']['tokens']:,} tokens", "seconds", "tokens/s"], rows)

    def loader_table() -> str:
        rows = [[f"{r['seq_len']:,}", str(r["batch_size"]), _n(r["tokens_per_s"], ",")] for r in R.data.loader.raw()]
        return _table(["seq_len", "batch size", "loader tokens/s"], rows)

    def compression_table(name: str = "compression_qa_short") -> str:
        """Exact match by method (rows) and evaluation ratio (columns) of one compression_qa result file."""
        d = R[name].raw()
        ratios = [str(r) for r in d["args"]["ratios"]]
        em = d["exact_match"]
        rows = [[name] + [_n(em[name].get(r), ".2f") for r in ratios] for name in ("ram", "comi", "mean_pool", "truncation")]
        rows.append(["uncompressed"] + [_n(em["uncompressed"], ".2f")] * len(ratios))
        return _table(["method"] + [f"exact match at {r}x" for r in ratios], rows)

    def compression_phase_table(name: str, *models: str) -> str:
        """Training answer loss at the end of each ratio-curriculum phase (the last of the 20 block
        means inside the phase), one row per compressor of one compression_qa result file."""
        d = R[name].raw()
        per_model = d["per_model"]
        rows = []
        for model in models:
            args = per_model[model].get("train_args") or d["args"]
            phases = list(args["ratio_curriculum"]) + [args["ratio"]]
            curve = per_model[model]["training"]["curve"]
            ends = [curve[(k + 1) * len(curve) // len(phases) - 1]["mean_loss"] for k in range(len(phases))]
            rows.append([f"{model} ({args['steps']} steps)"] + [_n(v, ".2f") for v in ends])
        return _table(["compressor"] + [f"loss at the end of {r}x" for r in phases], rows)

    def passkey_worst_depth(name: str, length: int) -> float:
        """The lowest exact-match accuracy over the depths of one result file at one length."""
        return min(row[str(length)] for row in R[name].by_depth.raw().values())

    def passkey_depth_table(*names: str) -> str:
        """Exact match by depth (rows) for each result file and length (columns)."""
        names = names or ("passkey_tiny", "passkey_tiny_no_temp", "passkey_tiny_no_gate")
        cols = [(n, L) for n in names for L in R[n].lengths.raw()]
        rows = [[depth] + [_n(R[n].by_depth.raw()[depth].get(str(L)), ".2f") for n, L in cols]
                for depth in R[names[0]].by_depth.raw()]
        return _table(["depth"] + [f"`{n}` at {L:,}" for n, L in cols], rows)

    def swat_multiple_table() -> str:
        """Loss by multiple of each model's own training length, 4 decimals."""
        d = R.swat_length.raw()
        mults = list(d["loss_by_multiple"][d["args"]["models"][0]])
        rows = [[f"`{m}` (trained at {d['per_model'][m]['train_length']})"]
                + [_n(d["loss_by_multiple"][m].get(k), ".4f") for k in mults] for m in d["args"]["models"]]
        return _table(["model"] + [f"{k}×" for k in mults], rows)

    def data_memory_table() -> str:
        """Peak memory of prepare + loading, one row per document length, plain text against JSON Lines."""
        by: dict[int, dict[str, dict]] = {}
        for r in R.data.memory_vs_document_length.raw():
            by.setdefault(r["target_tokens"], {})[r["format"]] = r
        rows = [[f"{t / 1e6:g}M tokens ({_n(max(r['file_mb'] for r in f.values()), '.2g')} MB)"]
                + [f"{f[k]['peak_rss_mb_with_loading']:,.0f} MB" if k in f else "" for k in ("text", "jsonl")]
                for t, f in by.items()]
        return _table(["document", "plain text file", "one JSON Lines record"], rows)

    def pipeline_table(*names: str) -> str:
        """``benchmarks/pipeline.py`` results, one row per file."""
        rows = []
        for n in names:
            d = R[n].raw()
            rows.append([f"`{n}.json`", str(d["ranks"]), str(d["layers"]), str(d["chunks"]), d["family"],
                         f"{d['hidden']} / {d['chunk_size']}", f"{d['grad_max_abs_diff']:.1e}",
                         _n(d["speedup_vs_naive"], ".2f"), _n(d["ideal_speedup"], ".2f"),
                         _n(d["speedup_fraction_of_ideal"], ".2f"), _n(d["mem_ratio_per_rank_to_single"], ".3f"),
                         _n(d["mem_target_ratio"], ".3f")])
        return _table(["result", "P", "L", "C", "family", "hidden / chunk", "grad max abs diff", "speedup vs naive",
                       "ideal", "fraction of ideal", "memory per rank / single", "memory target"], rows)

    def recipe_times_table() -> str:
        d = R.recipe_times.raw()
        rows = [[f"`{r['command']}`", _n(r["wall_seconds"], ".0f"), str(r.get("steps")), str(r.get("returncode")),
                 f"`{r.get('registered_model') or ''}`"] for r in d["runs"]]
        return _table(["command", "wall seconds", "steps", "exit", "registered"], rows)

    def efficiency_table(name: str = "efficiency_tiny") -> str:
        """``longctx bench efficiency`` output: one row per length, prefill / decode / memory per method."""
        d = R[name].raw()
        cell = {(r["method"], r["length"]): r for r in d["results"]}
        header, rows = ["tokens"], []
        for m in d["methods"]:
            header += [f"{m} prefill (s)", f"{m} decode (ms/token)", f"{m} peak memory (MB)"]
        for L in d["lengths"]:
            row = [f"{L:,}"]
            for m in d["methods"]:
                r = cell.get((m, L), {})
                row += ([_n(r["prefill_s"], ".2f"), _n(r["decode_ms_per_token"], ".1f"), _n(r["peak_mem_mb"], ",.1f")]
                        if "prefill_s" in r else ["skipped", "", ""])
            rows.append(row)
        return _table(header, rows)

    def ae_study_table(name: str = "ae_study_tiny") -> str:
        """Per (encoder, decoder) pair: mean F1 / BLEU / ROUGE-L, F1 per held-out corpus; then the group means."""
        d = R[name].raw()
        corpora = sorted(d["settings"]["corpora"])
        pairs = sorted(d["pairs"], key=lambda p: (not d["pairs"][p]["aligned"], p))
        rows = []
        for pair in pairs:
            v = d["pairs"][pair]
            rows.append([f"`{pair}`", "yes" if v["aligned"] else "no"]
                        + [_n(v["means"][k], ".3f") for k in ("f1", "bleu", "rouge_l")]
                        + [_n(v["by_corpus"][c]["f1"], ".3f") for c in corpora])
        for group, m in d["alignment"].items():
            rows.append([f"**{group}** (mean of {m['n']} texts)", ""]
                        + [_n(m[k], ".3f") for k in ("f1", "bleu", "rouge_l")] + [""] * len(corpora))
        header = ["encoder -> decoder", "aligned", "F1", "BLEU", "ROUGE-L"] + [f"F1 on {c}" for c in corpora]
        return _table(header, rows)

    def ae_study_correlations(name: str = "ae_study_tiny") -> str:
        """Spearman rho (p) of F1 against each entropy, per pair and pooled."""
        d = R[name].raw()["correlations"]
        order = ["pooled"] + sorted(k for k in d if k != "pooled")

        def cell(c):
            return "" if c["rho"] is None else f"{c['rho']:+.2f} (p = {c['p']:.2g}, n = {c['n']})"

        return _table(["texts of", "encoder entropy vs F1", "decoder entropy vs F1"],
                      [[f"`{k}`" if k != "pooled" else "every pair", cell(d[k]["encoder"]), cell(d[k]["decoder"])]
                       for k in order])

    def profile_table(name: str, phase: str, rows: int = 8) -> str:
        """The top `rows` profiler entries of one phase (the ``profile`` field of a result file, e.g.
        ``benchmarks/comet_speed.py --profile``), by self CPU time."""
        entries = R[name].profile[phase].raw()[:rows]
        return _table(["op", "self CPU (ms)", "calls"],
                      [[f"`{e['op']}`", _n(e["self_cpu_ms"], ",.1f"), f"{e['calls']:,}"] for e in entries])

    def efficiency(name: str, method: str, length: int, key: str):
        return next(r[key] for r in R[name].raw()["results"] if r["method"] == method and r["length"] == length)

    return {"R": R, "machine": machine, "comet_memory_table": comet_memory_table,
            "smollm2_lm_flat_table": smollm2_lm_flat_table,
            "efficiency_table": efficiency_table, "efficiency": efficiency, "pipeline_table": pipeline_table,
            "recipe_times_table": recipe_times_table,
            "swat_length_table": swat_length_table, "passkey_table": passkey_table, "data_table": data_table,
            "loader_table": loader_table, "compression_table": compression_table,
            "compression_phase_table": compression_phase_table,
            "passkey_depth_table": passkey_depth_table, "passkey_worst_depth": passkey_worst_depth,
            "swat_multiple_table": swat_multiple_table,
            "data_memory_table": data_memory_table, "ae_study_table": ae_study_table,
            "ae_study_correlations": ae_study_correlations, "profile_table": profile_table,
            "shared_flags_table": recipe_pages.shared_flags_table, "recipe_flags": recipe_pages.recipe_flags,
            "help_config": recipe_pages.help_config, "presets_line": recipe_pages.presets_line,
            "recipe_doc": recipe_pages.recipe_doc,
            "recipe_time": lambda command: recipe_pages.recipe_time(command, R.raw().get("recipe_times", {})),
            "min": min, "max": max, "abs": abs, "len": len, "sum": sum, "round": round}


def render(markdown: str, results: Path = RESULTS) -> str:
    """Replace every ``{{ EXPR | FORMAT }}`` in ``markdown`` by its value from the result files."""
    ns = make_namespace(load_results(results))

    def sub(m: re.Match) -> str:
        expr, spec = m.group(1), m.group(2)
        try:
            value = eval(expr, {"__builtins__": {}}, ns)  # noqa: S307  (the docs' own expressions)
        except Exception as err:
            raise ValueError(f"benchmark placeholder {m.group(0)!r}: {type(err).__name__}: {err}") from err
        if isinstance(value, Node):
            value = value.raw()
        return format(value, spec) if spec else str(value)

    return PLACEHOLDER.sub(sub, markdown)


# ---- mkdocs hook ----------------------------------------------------------------------------------

def on_page_markdown(markdown, page, config, files):
    return render(markdown) if "{{" in markdown else markdown


if __name__ == "__main__":
    import sys

    print(render(Path(sys.argv[1] if len(sys.argv) > 1 else REPO / "docs" / "benchmarks.md").read_text()), end="")
