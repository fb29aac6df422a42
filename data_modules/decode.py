"""Safe decoding of shard fields: images, numpy arrays (``allow_pickle=False``), JSON, text and integers; and the
image encoder the shard writers share.

Never pickle: a field with a pickle extension (``pyd``, ``pickle``, ``pth``...) is an error, as is any field the
caller asks for that no safe decoder handles.
"""

from __future__ import annotations

import io
import json

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchcodec.decoders import decode_image as decode_rgb

IMAGE_EXTS = ("png", "jpg", "jpeg", "webp")
UNSAFE_EXTS = ("pyd", "pickle", "pkl", "pth", "pt", "ckpt")
PIL_FORMATS = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP"}


def encode_image(img: Image.Image, fmt: str, quality: int) -> bytes:
    """``img`` as ``png`` (lossless; ``quality`` unused), ``jpg`` or ``webp`` bytes."""
    buf = io.BytesIO()
    img.save(buf, format=PIL_FORMATS[fmt], **({} if fmt == "png" else {"quality": quality}))
    return buf.getvalue()


def decode_image(data: bytes, channels: int = 3) -> Tensor:
    """uint8 ``(channels, H, W)`` tensor from encoded image bytes: 3 (RGB; grey images are repeated) or 1 (luma;
    colour images are converted).

    RGB goes through TorchCodec (libpng, libjpeg-turbo, libwebp; no FFmpeg involved): the pixels PIL gives, 1.4-2.9x
    faster on 32-224 px PNG, JPEG and WebP (``benchmarks/data_path.py``). PIL takes what TorchCodec declines (other
    bit depths or formats, damaged files, whose errors PIL reports) and grey, whose luma weights PIL defines."""
    if channels not in (1, 3):
        raise ValueError(f"channels={channels}: images decode to 3 (RGB) or 1 (grey) channels")
    if channels == 3:
        try:
            pixels = decode_rgb(data, mode="RGB")
        except (RuntimeError, ValueError):
            pixels = None
        if pixels is not None and pixels.dtype == torch.uint8 and pixels.dim() == 3:
            return pixels
    with Image.open(io.BytesIO(data)) as img:
        pixels = np.asarray(img.convert("RGB" if channels == 3 else "L")).copy()
    return torch.from_numpy(pixels).permute(2, 0, 1) if channels == 3 else torch.from_numpy(pixels).unsqueeze(0)


def decode_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def decode_field(field: str, data: bytes):
    """Decode one field by its extension (the part after the last dot)."""
    ext = field.rsplit(".", 1)[-1].lower()
    if ext in UNSAFE_EXTS:
        raise ValueError(f"field '{field}' would need pickle, which is never decoded: write arrays as .npy and metadata as .json")
    if ext in IMAGE_EXTS:
        return decode_image(data)
    if ext == "npy":
        return decode_npy(data)
    if ext == "json":
        return json.loads(data)
    if ext in ("cls", "idx", "index"):
        return int(data.decode("utf-8").strip())
    if ext == "txt":
        return data.decode("utf-8")
    raise ValueError(f"no safe decoder for field '{field}': use png/jpg/webp, npy, json, txt or cls")


def find_image_field(sample: dict) -> str:
    field = next((k for k in sample if k.rsplit(".", 1)[-1].lower() in IMAGE_EXTS), None)
    if field is None:
        raise KeyError(f"no image field (png/jpg/webp); fields: {sorted(k for k in sample if not k.startswith('__'))}")
    return field


def decode_image_sample(sample: dict, label_key: str | None, channels: int = 3) -> dict:
    """``{"image": uint8 (channels, H, W), "label": int?, "__key__": str}`` from a raw sample."""
    out = {"image": decode_image(sample[find_image_field(sample)], channels), "__key__": sample["__key__"]}
    if label_key and label_key in sample:
        out["label"] = decode_field(label_key, sample[label_key])
    return out
