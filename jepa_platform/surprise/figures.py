"""Surprise-over-time figures: a pair's frames and its two surprise curves, the violation frame marked."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure


def strip(frames: np.ndarray, every: int = 1) -> np.ndarray:
    """uint8 frames ``(T, C, H, W)`` or ``(T, H, W, C)`` side by side ``(H, T' * (W + 1), C)`` with a 1-px gap."""
    if frames.shape[1] in (1, 3) and frames.shape[-1] not in (1, 3):
        frames = frames.transpose(0, 2, 3, 1)
    frames = frames[::every]
    gap = np.full((frames.shape[1], 1, frames.shape[3]), 255, np.uint8)
    return np.concatenate([np.concatenate([f, gap], axis=1) for f in frames], axis=1)


def pair_figure(
    possible: np.ndarray,
    impossible: np.ndarray,
    curves: dict[str, tuple[np.ndarray, np.ndarray]],
    violation_frame: int,
    title: str,
) -> Figure:
    """The possible and impossible frames (rows) over the surprise curves of each model in ``curves``
    (``{name: (possible curve, impossible curve)}``), with the violation frame marked in both."""
    length = len(possible)
    fig = Figure(figsize=(max(6.0, 0.32 * length), 2.2 + 1.6 * len(curves)), layout="constrained")
    axes = fig.subplots(2 + len(curves), 1, height_ratios=[1, 1, *([2] * len(curves))])
    width = possible.shape[-1] if possible.shape[1] in (1, 3) else possible.shape[2]
    for ax, frames, name in ((axes[0], possible, "possible"), (axes[1], impossible, "impossible")):
        ax.imshow(strip(frames), interpolation="nearest")
        ax.axvline(violation_frame * (width + 1) - 0.5, color="red", linewidth=1.5)  # left edge of the violation frame
        ax.set_yticks([])
        ax.set_xticks([])
        ax.set_ylabel(name, fontsize=8, rotation=0, ha="right", va="center")
    axes[0].set_title(title, fontsize=9)
    t = np.arange(length)
    for ax, (name, (p, q)) in zip(axes[2:], curves.items(), strict=True):
        ax.plot(t, p, color="tab:blue", marker=".", label="possible")
        ax.plot(t, q, color="tab:red", marker=".", label="impossible")
        ax.axvline(violation_frame, color="red", linestyle="--", linewidth=1, label="violation")
        ax.set_xlim(-0.5, length - 0.5)
        ax.set_ylabel(f"surprise\n{name}", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7, loc="upper left")
    axes[-1].set_xlabel("frame", fontsize=8)
    return fig
