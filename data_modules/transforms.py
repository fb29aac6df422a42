"""Named transform pipelines, so that a preset or the command line changes one step of a pipeline without restating
the list: ``data.view_transform.blur=null`` drops the blur, ``data.eval_transform.normalize.mean=[0.5]`` sets the
statistics, and a preset built on another overrides only the steps it changes (``data=small_images_gray``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torchvision.transforms import v2


class Steps(v2.Compose):
    """``v2.Compose`` over named steps, applied in the order given; a step set to ``None`` is left out.

    A ``Compose`` (not a new kind of transform), so everything that reads a torchvision pipeline (the batched
    device augmentation, ``jepa data inspect``) reads this one too.
    """

    def __init__(self, **steps: Callable[[Any], Any] | None) -> None:
        super().__init__([step for step in steps.values() if step is not None])
