"""Image DataModule: multi-view (global views plus optional local crops) training batches from image shards.

Training batches: ``{"views": [Tensor(B, C, H, W)] * (num_views + num_local_crops), "label": Tensor(B)?,
"__key__": [str], "data_skipped": Tensor()}``; the global views come first, then the local crops (smaller).
With ``augment_on="device"`` the workers only decode: the loader's batches carry ``"raw"`` uint8 images instead of
views, and :meth:`ImageDataModule.on_after_batch_transfer` makes the views on the model's device
(:mod:`data_modules.batched_augment`).
Evaluation batches: ``{"image": Tensor(B, C, H, W), "label": Tensor(B)}``. The validation loaders are the
validation split (index 0) and a labelled kNN bank drawn from the training shards (index 1).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any, Literal

from torch import Tensor
from torchvision.transforms.v2 import functional as F

from data_modules.datamodule import StreamingDataModule, auto_workers
from data_modules.decode import decode_image_sample
from data_modules.epoch_plan import derive_seed
from jepa_platform.errors import ConfigError, DataError
from jepa_platform.host_syncs import host_side

Transform = Callable[[Tensor], Tensor]


class ImageViews:
    """One raw sample -> one item with every view (picklable, so it runs in DataLoader workers on any platform)."""

    def __init__(self, transforms: Sequence[Transform | None], label_key: str | None, channels: int = 3, shared: Transform | None = None) -> None:
        self.transforms, self.label_key, self.channels, self.shared = list(transforms), label_key, channels, shared

    def __call__(self, raw: dict) -> list[dict[str, Any]]:
        sample = decode_image_sample(raw, self.label_key, self.channels)
        image = sample["image"] if self.shared is None else self.shared(sample["image"])
        out: dict[str, Any] = {"views": [t(image) if t is not None else image for t in self.transforms], "__key__": sample["__key__"]}
        if "label" in sample:
            out["label"] = sample["label"]
        return [out]


class RawImages:
    """One raw sample -> ``{"raw": uint8 (C, H, W), "label"?, "__key__"}`` for views made on the device: images are
    batched as they are, so they must share one size, or ``raw_size`` resizes (shorter side) and centre-crops them."""

    def __init__(self, label_key: str | None, raw_size: int | None, channels: int = 3) -> None:
        self.label_key, self.raw_size, self.channels = label_key, raw_size, channels
        self._shape: tuple[int, ...] | None = None

    def __call__(self, raw: dict) -> list[dict[str, Any]]:
        sample = decode_image_sample(raw, self.label_key, self.channels)
        image = sample.pop("image")
        if self.raw_size:
            image = F.center_crop(F.resize(image, self.raw_size, antialias=True), [self.raw_size, self.raw_size])
        elif self._shape is None:
            self._shape = tuple(image.shape)
        elif tuple(image.shape) != self._shape:
            raise DataError(
                f"data.augment_on=device batches decoded images, which must share one size: {sample['__key__']} is "
                f"{tuple(image.shape)}, others {self._shape}: set data.raw_size=<side> (resize in the workers) or data.augment_on=workers"
            )
        sample["raw"] = image
        return [sample]


class ImageEval:
    """One raw sample -> ``{"image", "label"?, "__key__"}`` with the evaluation transform."""

    def __init__(self, transform: Transform | None, label_key: str | None, channels: int = 3) -> None:
        self.transform, self.label_key, self.channels = transform, label_key, channels

    def __call__(self, raw: dict) -> list[dict[str, Any]]:
        sample = decode_image_sample(raw, self.label_key, self.channels)
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
        augment_on: where the view augmentations run: ``workers`` (per sample, in the DataLoader workers) or
            ``device`` (batched on the model's device, translated from the same transforms with kornia).
        raw_size: with ``augment_on=device``, resize and centre-crop decoded images to this side in the workers
            (``None``: the images already share one size).
        channels: 3 (RGB; grey images repeated) or 1 (grey; colour images converted to luma): what every image
            decodes to, whatever its file holds. The encoder reads it (``encoder.in_chans``).
        shared_transform: applied once per sample before every view's own transform, so that the views share it:
            a crop and flip here and colour transforms per view give pixel-aligned views that differ in colour only
            (what a masked JEPA's ``target_view`` needs).
        **kwargs: :class:`~data_modules.datamodule.StreamingDataModule` arguments (urls, batch size, epochs...).
    """

    def __init__(
        self,
        urls: str | Sequence[str],
        view_transform: Transform | Sequence[Transform] | None,
        num_views: int,
        local_transform: Transform | None,
        num_local_crops: int,
        local_crop_size: int | None,
        eval_transform: Transform | None,
        image_size: int | None,
        label_key: str | None,
        num_classes: int | None,
        knn_bank_size: int,
        augment_on: Literal["workers", "device"],
        raw_size: int | None,
        channels: int,
        shared_transform: Transform | None,
        **kwargs: Any,
    ) -> None:
        if channels not in (1, 3):
            raise ConfigError(f"data.channels={channels}: use 3 (RGB) or 1 (grey)")
        if kwargs.get("num_workers") == "auto":
            kwargs["num_workers"] = auto_workers(decode_only=augment_on == "device")
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
        if augment_on not in ("workers", "device"):
            raise ConfigError(f"data.augment_on={augment_on!r}: use workers (per sample, CPU) or device (batched, kornia)")
        self.augment_on, self.raw_size, self.channels, self.shared_transform = augment_on, raw_size, channels, shared_transform
        self.batched_views = None
        if augment_on == "device":
            from data_modules.batched_augment import BatchedViews  # imports kornia

            names = ["data.view_transform"] * len(globals_) + ["data.local_transform"] * num_local_crops
            self.batched_views = BatchedViews(self.view_transforms, names, shared=shared_transform)

    def train_process(self) -> ImageViews | RawImages:
        if self.augment_on == "device":
            return RawImages(self.label_key, self.raw_size, self.channels)
        return ImageViews(self.view_transforms, self.label_key, self.channels, self.shared_transform)

    def views_seed(self, keys: list[str]) -> int:
        """The seed of a batch's device views: the run's seed, the epoch and the batch's sample keys (which the epoch
        plan fixes per rank and batch), so that a resumed run makes the views of the uninterrupted one without
        reading the training loop's counters."""
        with host_side():  # the loader's position tensor: it never goes to the device
            epoch = int(self._trained[0]) if self._trained is not None else 0  # the epoch the batch's data_position names
        digest = hashlib.blake2b("\n".join(map(str, keys)).encode(), digest_size=8).digest()
        return derive_seed(self.seed, epoch, int.from_bytes(digest, "little") >> 1)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """With ``augment_on=device``: training batches of ``raw`` uint8 images become ``views`` on their device."""
        if isinstance(batch, dict) and "raw" in batch and self.batched_views is not None:
            batch = dict(batch)
            raw, seed = batch.pop("raw"), self.views_seed(batch["__key__"])
            batch["views"] = self.batched_views.to(raw.device)(raw, seed)
            batch["batch_seed"] = derive_seed(seed, 1)  # for what else is drawn per batch on the device (masks)
        return batch

    def eval_process(self) -> ImageEval:
        if self.eval_transform is None:
            raise ConfigError("data.eval_transform is required for evaluation: set it (e.g. ToDtype + Normalize)")
        return ImageEval(self.eval_transform, self.label_key, self.channels)
