"""Batched device augmentation (data.augment_on=device): the same distributions of crops and colours as the
per-sample torchvision path, deterministic per seed, errors for what it cannot run, and the DataModule wiring."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision.transforms import v2

from data_modules import ImageDataModule
from data_modules.batched_augment import BatchedViews
from jepa_platform.config import build_preset
from jepa_platform.errors import ConfigError, DataError

N = 1000
# Distance allowed between the two paths' distributions of a statistic, in units of its standard deviation (see
# distance). Two runs of the same path with different seeds are 0.03-0.08 apart at N = 1000; the largest gap between
# the paths is the crop width (0.12: kornia's crops are 0.4 px wider on average on 48 px, a sub-pixel convention),
# and the mistranslations below are 0.18 to 0.68 away.
MAX_DISTANCE = 0.15


def distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Earth mover's distance between two samples of a statistic, over its standard deviation. Unlike the
    Kolmogorov-Smirnov distance, it is not thrown by the per-sample path rounding to uint8 after each step, which
    moves point masses (a saturation every output shares) by less than 1/255."""
    a, b = a.flatten().sort().values.double(), b.flatten().sort().values.double()
    scale = torch.cat([a, b]).std().clamp_min(1e-3)
    return float((a - b).abs().mean() / scale)


def both_paths(transform: v2.Transform, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    per_sample = torch.stack([transform(image) for image in images])
    return per_sample, BatchedViews([transform], ["t"])(images, seed=0)[0]


def coordinate_images(size: int = 48) -> torch.Tensor:
    """Red encodes x and green y, so a crop's position and extent can be read off its pixels."""
    ramp = torch.arange(size).float() * 255 / (size - 1)
    image = torch.stack([ramp.expand(size, size), ramp[:, None].expand(size, size), torch.full((size, size), 128.0)])
    return image.round().to(torch.uint8).expand(N, 3, size, size).contiguous()


CROP_STATS = {
    "centre x": lambda x: x[:, 0].mean((1, 2)),
    "centre y": lambda x: x[:, 1].mean((1, 2)),
    "width": lambda x: x[:, 0].amax((1, 2)) - x[:, 0].amin((1, 2)),
    "height": lambda x: x[:, 1].amax((1, 2)) - x[:, 1].amin((1, 2)),
    "flipped": lambda x: (x[:, 0, :, -1] < x[:, 0, :, 0]).float().mean(1),
}


def crops(scale: tuple[float, float]) -> v2.Compose:
    return v2.Compose([v2.RandomResizedCrop(24, scale=scale, antialias=True), v2.RandomHorizontalFlip(), v2.ToDtype(torch.float32, scale=True)])


def test_crops_have_the_same_distribution_on_both_paths():
    per_sample, batched = both_paths(crops((0.08, 1.0)), coordinate_images())
    distances = {name: distance(stat(per_sample), stat(batched)) for name, stat in CROP_STATS.items()}
    assert max(distances.values()) < MAX_DISTANCE, distances
    # the check can fail: a crop scale mistranslated to (0.3, 1.0) is far outside it
    _, wrong = both_paths(crops((0.3, 1.0)), coordinate_images())
    assert distance(CROP_STATS["width"](per_sample), CROP_STATS["width"](wrong)) > 2 * MAX_DISTANCE


def colours(jitter_p: float = 0.8) -> v2.Compose:
    return v2.Compose(
        [
            v2.RandomChannelPermutation(),
            v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.5)], p=jitter_p),
            v2.RandomGrayscale(p=0.2),
            v2.RandomSolarize(threshold=128, p=0.2),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize([0.5, 0.5, 0.5], [0.25, 0.25, 0.25]),
        ]
    )


COLOUR_STATS = {
    **{f"channel {c}": lambda x, c=c: x[:, c].mean((1, 2)) for c in range(3)},
    "saturation": lambda x: (x.amax(1) - x.amin(1)).mean((1, 2)),
    "brightness": lambda x: x.mean((1, 2, 3)),
}


@pytest.mark.parametrize("colour", [(200, 60, 30), "random"])
def test_colours_have_the_same_distribution_on_both_paths(colour):
    if colour == "random":
        flat = torch.randint(0, 256, (N, 3, 1, 1), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    else:
        flat = torch.tensor(colour, dtype=torch.uint8).view(1, 3, 1, 1).expand(N, 3, 1, 1)
    images = flat.expand(N, 3, 4, 4).contiguous()  # one colour per image: its output colour is the statistic
    per_sample, batched = both_paths(colours(), images)
    distances = {name: distance(stat(per_sample), stat(batched)) for name, stat in COLOUR_STATS.items()}
    assert max(distances.values()) < MAX_DISTANCE, distances
    if colour != "random":  # the check can fail: colour jitter applied with p=0.4 instead of 0.8 is detected
        _, wrong = both_paths(colours(jitter_p=0.4), images)
        assert max(distance(stat(per_sample), stat(wrong)) for stat in COLOUR_STATS.values()) > MAX_DISTANCE


def test_blur_and_the_full_imagenet_recipe_match_in_pixel_statistics():
    recipe = v2.Compose(
        [
            v2.RandomResizedCrop(16, scale=(0.08, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
            v2.RandomGrayscale(p=0.2),
            v2.RandomApply([v2.GaussianBlur(9, (0.1, 2.0))], p=0.5),
            v2.RandomSolarize(threshold=128, p=0.1),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )
    noise = torch.randint(0, 256, (N, 3, 16, 16), generator=torch.Generator().manual_seed(2), dtype=torch.uint8)
    per_sample, batched = both_paths(recipe, noise)
    for name, stat in {"mean": lambda x: x.mean((1, 2, 3)), "std": lambda x: x.std((1, 2, 3))}.items():
        assert distance(stat(per_sample), stat(batched)) < MAX_DISTANCE, name


def test_views_are_fixed_by_the_seed_alone():
    views = BatchedViews([colours(0.5), crops((0.08, 1.0))], ["a", "b"])
    images = coordinate_images(16)[:64]
    first = views(images, seed=7)
    torch.manual_seed(123)  # the global RNG state does not matter, and is left as it was
    state = torch.random.get_rng_state()
    again = views(images, seed=7)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(views(images, seed=8)[0], first[0])
    assert first[0].dtype == torch.float32 and first[1].shape == (64, 3, 24, 24)


def test_a_transform_without_a_device_version_is_a_config_error():
    with pytest.raises(ConfigError, match=r"data.view_transform: RandomRotation has no batched device version: .* data.augment_on=workers"):
        BatchedViews([v2.Compose([v2.RandomRotation(10)])], ["data.view_transform"])


def test_device_datamodule_batches_raw_images_and_makes_views_after_transfer(data_root: Path, make_cfg):
    from hydra.utils import instantiate

    cfg = make_cfg("data.augment_on=device", "data.num_workers=0")
    dm: ImageDataModule = instantiate(cfg.data, _convert_="all")
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert "views" not in batch and batch["raw"].dtype == torch.uint8
    out = dm.on_after_batch_transfer(batch, 0)
    assert len(out["views"]) == 2 and out["views"][0].shape == (cfg.data.batch_size, 3, 32, 32)
    assert "raw" not in out and torch.equal(out["label"], batch["label"])
    with pytest.raises(ConfigError, match=r"data.augment_on='gpu': use workers"):
        build_preset("data=images", "data.urls=x", urls=str(data_root), augment_on="gpu")


def test_images_of_several_sizes_need_raw_size():
    from data_modules.images import RawImages

    def sample(side: int) -> dict:
        from PIL import Image

        from data_modules.decode import encode_image

        return {"__key__": f"s{side}", "png": encode_image(Image.new("RGB", (side, side + 4)), "png", 90)}

    raw = RawImages(label_key=None, raw_size=None)
    raw(sample(8))
    with pytest.raises(DataError, match=r"s12 is \(3, 16, 12\), others \(3, 12, 8\): set data.raw_size"):
        raw(sample(12))
    fixed = RawImages(label_key=None, raw_size=8)
    assert fixed(sample(8))[0]["raw"].shape == fixed(sample(12))[0]["raw"].shape == (3, 8, 8)


def test_masked_jepa_trains_on_device_views(tmp_path: Path, data_root: Path):
    """Masks follow the views to the device (their grid is the views' size, known there), seeded per batch."""
    from support.cli import run_jepa

    env = {"JEPA_DATA_DIR": str(data_root), "JEPA_RUNS_DIR": str(tmp_path / "runs")}
    run = run_jepa(["train", "objective=ema_jepa", "debug=fast_vit", "data.augment_on=device", "trainer.limit_train_batches=3", "logger=none"], env)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "final: val/probe_acc=" in run.stdout and "batch has no masks" not in run.stderr


@pytest.mark.parametrize("preset", ["small_images", "small_images_gray"])
def test_small_image_presets_match_on_both_paths(preset: str, make_cfg):
    """data=small_images(_gray): the CIFAR-style views run batched on the device with the same pixel statistics, on
    the channels the preset decodes to (one for grey images: no saturation, hue or greyscale in its jitter)."""
    from hydra.utils import instantiate

    cfg = make_cfg(f"data={preset}", "data.urls=unused")
    transform = instantiate(cfg.data.view_transform, _convert_="all")
    channels = cfg.data.channels
    assert channels == (1 if preset.endswith("gray") else 3) and cfg.encoder.in_chans == channels
    assert not any(isinstance(t, v2.GaussianBlur) for t in _flatten(transform))  # no blur at 32 px
    noise = torch.randint(0, 256, (N, channels, 32, 32), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)
    per_sample, batched = both_paths(transform, noise)
    assert batched.shape == per_sample.shape == (N, channels, 32, 32)
    for name, stat in {"mean": lambda x: x.mean((1, 2, 3)), "std": lambda x: x.std((1, 2, 3))}.items():
        assert distance(stat(per_sample), stat(batched)) < MAX_DISTANCE, name


def _flatten(t) -> list:
    inner = getattr(t, "transforms", None)
    return [t] if inner is None else [leaf for child in inner for leaf in _flatten(child)]


def test_shared_transform_makes_views_that_differ_in_colour_only():
    """data.shared_transform runs once per sample before each view's own transform, on both paths: one crop for
    every view of an image, so that views are pixel-aligned (what objective.target_view needs)."""
    from data_modules.images import ImageViews

    shared = v2.Compose([v2.RandomResizedCrop(16, scale=(0.08, 1.0), antialias=True), v2.RandomHorizontalFlip()])
    to_float = v2.ToDtype(torch.float32, scale=True)
    images = coordinate_images(32)[:64]
    first, second = BatchedViews([to_float, to_float], ["a", "b"], shared=shared)(images, seed=0)
    assert first.shape == (64, 3, 16, 16) and torch.equal(first, second)
    unshared = BatchedViews([v2.Compose([shared, to_float])] * 2, ["a", "b"])(images, seed=0)
    assert not torch.equal(*unshared)  # without it each view draws its own crop

    from PIL import Image

    from data_modules.decode import encode_image

    raw = {"__key__": "k", "png": encode_image(Image.fromarray(images[0].permute(1, 2, 0).numpy()), "png", 90)}
    brighter = v2.Compose([v2.ColorJitter(brightness=(1.5, 1.5)), to_float])
    torch.manual_seed(0)
    for sharing in (shared, None):
        transforms = [to_float, brighter] if sharing else [v2.Compose([shared, to_float]), v2.Compose([shared, brighter])]
        a, b = ImageViews(transforms, None, shared=sharing)(raw)[0]["views"]
        if sharing:  # the same pixels, brightened: x 1.5 up to saturation
            assert a.shape == b.shape == (3, 16, 16) and torch.allclose(b, (a * 1.5).clamp(max=1), atol=1 / 255)
        else:
            assert not torch.allclose(b, (a * 1.5).clamp(max=1), atol=1 / 255)
