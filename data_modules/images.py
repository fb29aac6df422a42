"""Image DataModule: multi-view (global views plus optional local crops) training batches from image shards.

Training batches: ``{"views": [Tensor(B, C, H, W)] * (num_views + num_local_crops), "label": Tensor(B)?,
"__key__": [str], "data_skipped": Tensor()}``; the global views come first, then the local crops (smaller).
Evaluation batches: ``{"image": Tensor(B, C, H, W), "label": Tensor(B)}``. The validation loaders are the
validation split (index 0) and a labelled kNN bank drawn from the training shards (index 1).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor

from data_modules.decode import decode_image_sample
from data_modules.streaming import StreamingDataModule
from jepa_platform.errors import ConfigError

Transform = Callable[[Tensor], Tensor]


class ImageViews:
    """One raw sample -> one item with every view (picklable, so it runs in DataLoader workers on any platform)."""

    def __init__(self, transforms: Sequence[Transform | None], label_key: str | None) -> None:
        self.transforms, self.label_key = list(transforms), label_key

    def __call__(self, raw: dict) -> list[dict[str, Any]]:
        sample = decode_image_sample(raw, self.label_key)
        image = sample["image"]
        out: dict[str, Any] = {"views": [t(image) if t is not None else image for t in self.transforms], "__key__": sample["__key__"]}
        if "label" in sample:
            out["label"] = sample["label"]
        return [out]


class ImageEval:
    """One raw sample -> ``{"image", "label"?, "__key__"}`` with the evaluation transform."""

    def __init__(self, transform: Transform | None, label_key: str | None) -> None:
        self.transform, self.label_key = transform, label_key

    def __call__(self, raw: dict) -> list[dict[str, Any]]:
        sample = decode_image_sample(raw, self.label_key)
        if self.transform is not None:
            sample["image"] = self.transform(sample["image"])
        return [sample]


class ImageDataModule(StreamingDataModule):
    """Multi-view image batches from WebDataset shards (any image field: png/jpg/webp; label field ``cls``).

    Args:
        view_transform: transform of each global view (uint8 CHW tensor in), or one per global view.
        num_views: global views per sample.
        local_transform: transform of the local crops (multi-crop); required when ``num_local_crops > 0``.
        num_local_crops: small crops per sample, after the global views.
        local_crop_size: side of the local crops (configs interpolate it into ``local_transform``).
        eval_transform: transform for validation and kNN-bank images.
        image_size: side of the global views (size-dependent encoder configs read it).
        label_key: field with the integer label (``None``: unlabelled).
        num_classes: label classes for probes; default: the classes in the dataset's manifest.
        knn_bank_size: labelled training samples in the kNN bank loader (0: none).
        **kwargs: :class:`~data_modules.streaming.StreamingDataModule` arguments (urls, batch size, epochs...).
    """

    def __init__(
        self,
        urls: str | Sequence[str],
        view_transform: Transform | Sequence[Transform] | None = None,
        num_views: int = 2,
        local_transform: Transform | None = None,
        num_local_crops: int = 0,
        local_crop_size: int | None = None,
        eval_transform: Transform | None = None,
        image_size: int | None = None,
        label_key: str | None = "cls",
        num_classes: int | None = None,
        knn_bank_size: int = 10000,
        **kwargs: Any,
    ) -> None:
        super().__init__(urls, **kwargs)
        if isinstance(view_transform, Sequence) and len(view_transform) != num_views:
            raise ConfigError(f"data.view_transform lists {len(view_transform)} transforms for {num_views} views: give one, or one per view")
        if num_local_crops and local_transform is None:
            raise ConfigError(f"data.num_local_crops={num_local_crops} needs data.local_transform (the small-crop augmentation)")
        globals_ = list(view_transform) if isinstance(view_transform, Sequence) else [view_transform] * num_views
        self.view_transforms = globals_ + [local_transform] * num_local_crops
        self.num_views, self.num_local_crops, self.local_crop_size = num_views, num_local_crops, local_crop_size
        self.eval_transform, self.image_size, self.label_key = eval_transform, image_size, label_key
        classes = (self.manifest or {}).get("classes")
        self.num_classes = num_classes if num_classes is not None else (len(classes) if classes else None)
        self.knn_bank_size = knn_bank_size

    def train_process(self) -> ImageViews:
        return ImageViews(self.view_transforms, self.label_key)

    def eval_process(self) -> ImageEval:
        if self.eval_transform is None:
            raise ConfigError("data.eval_transform is required for evaluation: set it (e.g. ToDtype + Normalize)")
        return ImageEval(self.eval_transform, self.label_key)
