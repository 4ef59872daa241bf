"""The analysis of the autoencoder study (recipes/ae_study.py): per-sample records of every
(encoder LM, decoder LM) pair in, the paper's three comparisons out.

    report = study_report(records_by_pair)     # {"<enc>-><dec>": [record, ...]}, records of autoencoder_eval
    report["correlations"]["pooled"]["encoder"]   # {"rho", "p", "n"}: encoder entropy vs F1, every pair
    report["alignment"]                        # the aligned-against-misaligned table
    scatter_plot(records_by_pair, "encoder", "scatter_encoder.png")

A pair's name is ``<encoder corpus>-><decoder corpus>``; it is aligned when both LMs were pretrained
on the same corpus. Each record carries the corpus of its held-out text (``corpus``).
"""

from __future__ import annotations

from typing import Mapping, Sequence

from framework.eval.autoencoder_eval import METRICS, entropy_correlations, means

ARROW = "->"


def pair_name(encoder: str, decoder: str) -> str:
    return f"{encoder}{ARROW}{decoder}"


def is_aligned(pair: str) -> bool:
    encoder, decoder = pair.split(ARROW)
    return encoder == decoder


def study_report(records_by_pair: Mapping[str, Sequence[dict]]) -> dict:
    """Correlations per pair and pooled, the per-pair means (overall and per held-out corpus), and the
    aligned-against-misaligned means."""
    pooled = [r for records in records_by_pair.values() for r in records]
    pairs = {}
    for pair, records in records_by_pair.items():
        corpora = sorted({r["corpus"] for r in records})
        pairs[pair] = {"aligned": is_aligned(pair), "means": means(records),
                       "by_corpus": {c: means([r for r in records if r["corpus"] == c]) for c in corpora},
                       "correlations": entropy_correlations(records)}
    groups = {"aligned": [r for p, rs in records_by_pair.items() if is_aligned(p) for r in rs],
              "misaligned": [r for p, rs in records_by_pair.items() if not is_aligned(p) for r in rs]}
    return {"pairs": pairs,
            "correlations": {"pooled": entropy_correlations(pooled),
                             **{p: v["correlations"] for p, v in pairs.items()}},
            "alignment": {g: {**means(rs), "n": len(rs)} for g, rs in groups.items() if rs}}


def flat_metrics(report: dict) -> dict:
    """MLflow metrics of the report: spearman/<side>/<pair|pooled>/{rho,p}, <pair>/<metric>, aligned/<metric>."""
    from framework.eval.reporting import metric_key

    out = {}
    for where, sides in report["correlations"].items():
        for side, value in sides.items():
            for stat in ("rho", "p"):
                if value[stat] is not None:
                    key = metric_key("spearman", f"{side}_entropy_vs_f1", where.replace(ARROW, "_to_"), stat)
                    out[key] = value[stat]
    for pair, value in report["pairs"].items():
        for metric in METRICS:
            out[metric_key("pair", pair.replace(ARROW, "_to_"), metric)] = value["means"][metric]
    for group, value in report["alignment"].items():
        for metric in METRICS:
            out[metric_key(group, metric)] = value[metric]
    return out


def alignment_table(report: dict) -> str:
    """A Markdown table: one row per pair (aligned first), mean F1/BLEU/ROUGE-L, then the group means."""
    lines = ["| encoder -> decoder | aligned | F1 | BLEU | ROUGE-L |", "|---|---|---|---|---|"]
    order = sorted(report["pairs"], key=lambda p: (not report["pairs"][p]["aligned"], p))
    for pair in order:
        m = report["pairs"][pair]["means"]
        lines.append(f"| {pair} | {'yes' if report['pairs'][pair]['aligned'] else 'no'} | "
                     f"{m['f1']:.3f} | {m['bleu']:.3f} | {m['rouge_l']:.3f} |")
    for group, m in report["alignment"].items():
        lines.append(f"| **{group} (mean)** | | {m['f1']:.3f} | {m['bleu']:.3f} | {m['rouge_l']:.3f} |")
    return "\n".join(lines)


def scatter_plot(records_by_pair: Mapping[str, Sequence[dict]], side: str, path: str,
                 correlations: Mapping | None = None) -> str:
    """F1 against the `side` ("encoder" or "decoder") entropy, one colour per pair, rho in the legend."""
    from framework.eval.plots import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for pair, records in records_by_pair.items():
        label = pair
        if correlations and correlations.get(pair, {}).get(side, {}).get("rho") is not None:
            c = correlations[pair][side]
            label += f" (rho {c['rho']:+.2f}, p {c['p']:.2g})"
        ax.scatter([r[f"{side}_entropy"] for r in records], [r["f1"] for r in records], s=14, alpha=0.7, label=label)
    ax.set_xlabel(f"entropy measured by the {side} (mean token NLL, nats)")
    ax.set_ylabel("reconstruction token F1")
    title = f"Reconstruction vs {side}-measured entropy"
    if correlations and correlations.get("pooled", {}).get(side, {}).get("rho") is not None:
        c = correlations["pooled"][side]
        title += f"\npooled Spearman rho {c['rho']:+.2f} (p {c['p']:.2g}, n {c['n']})"
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
