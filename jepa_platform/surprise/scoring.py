"""Surprise over time and the pairwise figures (pure functions of a model and clips, or of surprise curves).

Windowing: for a clip of ``T`` frames, a context of ``C`` frames and a horizon of ``H``, the window ending at frame
``t`` (``C <= t <= T - H``) is frames ``t - C .. t + H - 1``; the model sees its first ``C`` frames and predicts
the next ``H``. **Surprise at frame t** is the mean prediction error over those ``H`` frames. Frames before ``C``
have no surprise (``NaN``): nothing has been seen to predict them from. A clip's **peak surprise** is the maximum
over its frames; the impossible clip of a pair should have the higher peak (**pairwise accuracy**), and the
**relative surprise** of a pair is ``(peak impossible - peak possible) / peak possible``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@torch.no_grad()
def surprise_over_time(
    model: torch.nn.Module,
    clips: Tensor,
    context: int,
    horizon: int,
    batch_size: int = 256,
    actions: Tensor | None = None,
    from_frame: Sequence[int] | None = None,
) -> np.ndarray:
    """Surprise ``(N, T)`` (float64, ``NaN`` before ``context``) of clips ``(N, T, C, H, W)`` (normalised as the model
    trained); every window of every clip goes through ``model.future_errors`` in batches of ``batch_size``.
    ``from_frame[i]``: only the windows of clip ``i`` that reach that frame are scored (the others stay ``NaN``): the
    impossible clip of a pair repeats its possible twin's windows up to the violation."""
    n, length = clips.shape[:2]
    span = context + horizon
    if length < span:
        raise ValueError(f"clips of {length} frames are shorter than a window of {context} context + {horizon} predicted frames")
    ends = range(context, length - horizon + 1)
    windows = [(i, t) for i in range(n) for t in ends if from_frame is None or t + horizon > from_frame[i]]
    out = np.full((n, length), math.nan)
    device = next(model.parameters()).device
    for start in range(0, len(windows), batch_size):
        chunk = windows[start : start + batch_size]
        frames = torch.stack([clips[i, t - context : t + horizon] for i, t in chunk]).to(device)
        kwargs = {}
        if actions is not None:
            kwargs["actions"] = torch.stack([actions[i, t - context : t + horizon - 1] for i, t in chunk]).to(device)
        errors = model.future_errors(frames, context, **kwargs).float().mean(dim=1).cpu().numpy()
        for (i, t), e in zip(chunk, errors, strict=True):
            out[i, t] = e
    return out


@dataclass
class PairScore:
    """One pair's peaks and whether the impossible clip surprised more."""

    violation: str
    peak_possible: float
    peak_impossible: float

    @property
    def correct(self) -> bool:
        return self.peak_impossible > self.peak_possible

    @property
    def relative(self) -> float:
        return (self.peak_impossible - self.peak_possible) / max(self.peak_possible, 1e-12)


def score_pairs(possible: np.ndarray, impossible: np.ndarray, violations: Sequence[str]) -> list[PairScore]:
    """Pair scores from surprise curves ``(P, T)`` of the possible and impossible clips."""
    return [PairScore(v, float(np.nanmax(p)), float(np.nanmax(q))) for p, q, v in zip(possible, impossible, violations, strict=True)]


def summarise(scores: Sequence[PairScore], types: Sequence[str]) -> dict[str, dict[str, float]]:
    """``{type or "overall": {"pairs", "pairwise_acc", "relative"}}``: accuracy and mean relative surprise per
    violation type (in ``types`` order, those present) and over every pair."""
    groups: Mapping[str, list[PairScore]] = {t: [s for s in scores if s.violation == t] for t in types}
    out = {}
    for name, group in [*((t, g) for t, g in groups.items() if g), ("overall", list(scores))]:
        out[name] = {
            "pairs": float(len(group)),
            "pairwise_acc": float(np.mean([s.correct for s in group])) if group else math.nan,
            "relative": float(np.mean([s.relative for s in group])) if group else math.nan,
        }
    return out
