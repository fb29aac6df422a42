"""Small PNG figures for MLflow: what a researcher looks at to judge a representation, and comparison curves.

Each function returns a matplotlib ``Figure`` built without pyplot (no global state, no display, no backend
switched: a notebook's inline backend still shows them); :func:`save` writes one as a small PNG. Kept free of
Lightning and MLflow so that notebooks and ``jepa compare`` draw the same figures.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

SMALL = (4.0, 3.2)
DPI = 80


def save(fig: Figure, path: Path) -> Path:
    """Write ``fig`` as a PNG at ``path`` (parents created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path


def correlation_heatmap(corr: np.ndarray, title: str = "embedding correlation") -> Figure:
    """Correlation matrix of embedding dimensions: a diagonal image when the dimensions are decorrelated."""
    fig = Figure(figsize=SMALL, layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(np.asarray(corr), cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
    fig.colorbar(im, ax=ax, shrink=0.8)
    ax.set_title(f"{title} ({corr.shape[0]} dims)", fontsize=9)
    ax.set_xlabel("dimension", fontsize=8)
    ax.set_ylabel("dimension", fontsize=8)
    return fig


def singular_value_spectrum(singular_values: np.ndarray, rank: float | None = None, title: str = "singular values") -> Figure:
    """Singular values of the embeddings (descending, log scale) with the effective rank marked: a flat spectrum
    spreads information over many dimensions, a cliff after a few dimensions is (dimensional) collapse."""
    sv = np.asarray(singular_values, dtype=np.float64)
    fig = Figure(figsize=SMALL, layout="constrained")
    ax = fig.subplots()
    ax.plot(np.arange(1, sv.size + 1), np.maximum(sv, 1e-12), lw=1.5)
    ax.set_yscale("log")
    if rank is not None and np.isfinite(rank):
        ax.axvline(rank, color="tab:red", ls="--", lw=1, label=f"effective rank {rank:.1f}")
        ax.legend(fontsize=7)
    ax.set_xlabel("index", fontsize=8)
    ax.set_ylabel("singular value", fontsize=8)
    ax.set_title(title, fontsize=9)
    return fig


def energy_histogram(energies: Mapping[str, np.ndarray], title: str = "energy of observed pairs") -> Figure:
    """Histogram of per-sample energies, one series per level (H-JEPA levels) on shared bins."""
    fig = Figure(figsize=SMALL, layout="constrained")
    ax = fig.subplots()
    values = [np.asarray(v, dtype=np.float64) for v in energies.values()]
    finite = np.concatenate([v[np.isfinite(v)] for v in values]) if values else np.zeros(0)
    bins = np.histogram_bin_edges(finite, bins=40) if finite.size else 10
    for name, v in zip(energies, values, strict=True):
        v = v[np.isfinite(v)]
        ax.hist(v, bins=bins, alpha=0.55, label=f"{name} (mean {v.mean():.3g})" if v.size else name)
    ax.set_xlabel("energy per sample", fontsize=8)
    ax.set_ylabel("samples", fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return fig


def level_energies(history: Mapping[str, Sequence[tuple[int, float]]], title: str = "energy per level") -> Figure:
    """Mean energy of each level against the epoch (log scale when positive)."""
    fig = Figure(figsize=SMALL, layout="constrained")
    ax = fig.subplots()
    for name, points in history.items():
        epochs, values = zip(*points, strict=True) if points else ((), ())
        ax.plot(epochs, values, marker="o", ms=3, label=name)
    if all(v > 0 for points in history.values() for _, v in points):
        ax.set_yscale("log")
    ax.set_xlabel("epoch", fontsize=8)
    ax.set_ylabel("mean energy", fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return fig


def draw_bands(ax: Any, series: Mapping[str, Sequence[tuple[Sequence[float], Sequence[float]]]]) -> None:
    """On ``ax``: one line per group (the mean over its runs) with a band of one standard deviation over the runs.

    ``series`` maps a group's label to its runs' ``(x, y)`` curves; the curves of a group are put on the x values
    of its shortest run (interpolated), so runs logged at slightly different steps or times still average."""
    for label, runs in series.items():
        curves = [(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)) for x, y in runs if len(x)]
        if not curves:
            continue
        grid = min((x for x, _ in curves), key=lambda x: x[-1])
        ys = np.stack([np.interp(grid, x, y) for x, y in curves])
        mean = ys.mean(axis=0)
        (line,) = ax.plot(grid, mean, lw=1.5, marker="o" if grid.size == 1 else None, label=f"{label} (n={len(curves)})")
        if len(curves) > 1:
            std = ys.std(axis=0, ddof=1)
            ax.fill_between(grid, mean - std, mean + std, color=line.get_color(), alpha=0.2, lw=0)


def band_curves(series: Mapping[str, Sequence[tuple[Sequence[float], Sequence[float]]]], xlabel: str, ylabel: str, title: str = "") -> Figure:
    """A figure of :func:`draw_bands`."""
    fig = Figure(figsize=(5.0, 3.6), layout="constrained")
    ax = fig.subplots()
    draw_bands(ax, series)
    values = np.concatenate([np.asarray(y, dtype=np.float64) for runs in series.values() for _, y in runs] or [np.zeros(0)])
    values = values[np.isfinite(values)]
    if values.size and values.min() > 0 and values.max() / values.min() > 100:  # e.g. energies on different scales
        ax.set_yscale("log")
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_title(title or ylabel, fontsize=9)
    ax.legend(fontsize=7)
    return fig
