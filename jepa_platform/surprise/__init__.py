"""Surprise at impossible events (violation of expectation): a model that predicts future frame embeddings is
surprised where its prediction fails; on a pair of clips identical up to an impossible event, the impossible one
should surprise it more.

An objective takes part by implementing (see :class:`FuturePredictor`):

- ``future_errors(frames, context) -> (B, L - context)``: the prediction error of each frame after the first
  ``context`` frames of windows ``(B, L, C, H, W)``, predicted from those frames only;
- ``surprise_window() -> (context, horizon)``: the window it was trained to predict (``context`` ``None``: the run's
  clip length minus ``horizon``).

``ac_jepa`` (passive, ``action_dim=0``), ``ema_jepa`` (clips), ``h_jepa`` (level 1) and ``pixel_predictor`` do;
a plugin objective that implements both methods works with ``jepa surprise`` unchanged.
"""

from typing import Protocol, runtime_checkable

from torch import Tensor


@runtime_checkable
class FuturePredictor(Protocol):
    def surprise_window(self) -> tuple[int | None, int]: ...

    def future_errors(self, frames: Tensor, context: int) -> Tensor: ...


__all__ = ["FuturePredictor"]
