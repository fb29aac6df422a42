"""Safe sample decoding for WebDataset shards: images and integer labels only; never pickle.

Samples that fail to decode are counted, logged and skipped, until the failure rate exceeds the configured bound:
then the run stops with an error naming the shard, since silently training on a fraction of the data is worse.
"""

from __future__ import annotations

import io
import logging

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from jepa_platform.errors import DataError

log = logging.getLogger(__name__)

IMAGE_EXTS = ("png", "jpg", "jpeg", "webp")


def decode_image_bytes(data: bytes) -> Tensor:
    """uint8 ``(3, H, W)`` tensor from encoded image bytes (PIL: torchvision.io's decoders are deprecated)."""
    with Image.open(io.BytesIO(data)) as img:
        return torch.from_numpy(np.asarray(img.convert("RGB")).copy()).permute(2, 0, 1)


def decode_label(data: bytes) -> int:
    return int(data.decode("utf-8").strip())


class SampleDecoder:
    """Maps a raw WebDataset sample to ``{"image": uint8 (3, H, W), "label": int?}``, skipping bad samples."""

    def __init__(
        self, image_keys: tuple[str, ...] = IMAGE_EXTS, label_key: str | None = "cls", max_error_rate: float = 0.01, min_samples_for_rate: int = 200
    ) -> None:
        self.image_keys, self.label_key = image_keys, label_key
        self.max_error_rate, self.min_samples = max_error_rate, min_samples_for_rate
        self.seen = self.failed = 0

    def _record_failure(self, where: str, exc: BaseException) -> None:
        self.failed += 1
        if self.failed <= 10:
            log.warning("skipping undecodable sample %s: %s", where, exc)
        rate = self.failed / max(self.seen, 1)
        if (self.seen >= self.min_samples and rate > self.max_error_rate) or self.max_error_rate == 0:
            raise DataError(
                f"{self.failed} of {self.seen} samples failed to decode (last: {where}: {exc}); "
                f"fix the shards or raise data.max_decode_error_rate (now {self.max_error_rate})"
            )

    def handler(self, exc: BaseException) -> bool:
        """WebDataset error handler for tar-level failures: count, log, continue."""
        self.seen += 1
        self._record_failure("(tar read)", exc)
        return True

    def __call__(self, sample: dict) -> dict | None:
        self.seen += 1
        where = f"{sample.get('__url__', '?')}:{sample.get('__key__', '?')}"
        try:
            key = next((k for k in self.image_keys if k in sample), None)
            if key is None:
                raise KeyError(f"no image field among {self.image_keys}; fields: {sorted(k for k in sample if not k.startswith('__'))}")
            out = {"image": decode_image_bytes(sample[key])}
            if self.label_key and self.label_key in sample:
                out["label"] = decode_label(sample[self.label_key])
            return out
        except DataError:
            raise
        except Exception as exc:
            self._record_failure(where, exc)
            return None
