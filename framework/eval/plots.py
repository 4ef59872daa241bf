"""PNG figures of evaluation results (matplotlib, headless)."""

from __future__ import annotations

import os
from typing import Mapping, Sequence


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def heatmap(values: Sequence[Sequence[float]], rows: Sequence[str], cols: Sequence[str], path: str, *,
            title: str, xlabel: str, ylabel: str, vmin: float = 0.0, vmax: float = 1.0) -> str:
    """values[i][j] for row label i and column label j, coloured red (vmin) to green (vmax), annotated."""
    plt = _pyplot()
    import textwrap

    fig, ax = plt.subplots(figsize=(max(4.0, 1.6 + 1.1 * len(cols)), 1.4 + 0.55 * max(len(rows), 1)))
    image = ax.imshow(values, cmap="RdYlGn", vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(cols)), labels=list(cols))
    ax.set_yticks(range(len(rows)), labels=list(rows))
    for i, row in enumerate(values):
        for j, value in enumerate(row):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title("\n".join(textwrap.wrap(title, 40)), fontsize=9)
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def line_plot(series: Mapping[str, tuple[Sequence[float], Sequence[float]]], path: str, *, title: str,
              xlabel: str, ylabel: str, logx: bool = False, logy: bool = False,
              references: Mapping[str, float] | None = None, ylim: tuple[float, float] | None = None) -> str:
    """One line per name: series[name] = (xs, ys); a dashed horizontal line per reference value.
    logx draws a log-2 x axis with plain tick labels."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, (xs, ys) in series.items():
        ax.plot(list(xs), list(ys), marker="o", label=name)
    for i, (name, value) in enumerate((references or {}).items()):
        ax.axhline(value, linestyle="--", color=f"C{len(series) + i}", label=name)
    if logx:
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda x, _: f"{x:g}"))
    if logy:
        ax.set_yscale("log")
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def ratio_plot(series: Mapping[str, tuple[Sequence[float], Sequence[float]]], path: str, *, title: str,
               xlabel: str, ylabel: str, references: Mapping[str, float] | None = None,
               ylim: tuple[float, float] | None = None) -> str:
    """A metric against compression ratio on a log-2 x axis (see line_plot), e.g. with the
    uncompressed prompt's score as a reference."""
    return line_plot(series, path, title=title, xlabel=xlabel, ylabel=ylabel, logx=True, references=references,
                     ylim=ylim)
