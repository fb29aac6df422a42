"""``jepa export RUN``: the trained encoder of a run as one consolidated file for downstream use.

The file is a plain dict that loads with ``torch.load(path, weights_only=True)``, from a single-file or a sharded
(FSDP) checkpoint alike:

* ``state_dict``: the encoder's weights as full tensors; for timm encoders, with the keys of the timm model itself,
  so ``timm.create_model(timm_name, num_classes=0, **timm_kwargs).load_state_dict(state_dict)`` rebuilds it
  (unless ``small_stem`` is true: then use :func:`load_exported`);
* ``timm_name``, ``timm_kwargs`` (``model_kwargs`` plus ``in_chans``), ``small_stem``, ``num_features``;
* ``encoder_config``: the run's resolved ``encoder`` config (``_target_`` and arguments), for non-timm encoders;
* ``input``: what the encoder expects, as timm's ``pretrained_cfg`` says it (``input_size`` C x H x W, ``mean``,
  ``std`` of pixels scaled to [0, 1], ``interpolation``, ``crop_mode``), from the run's evaluation transform:
  ``load_exported(path, with_preprocessing=True)`` hands back the matching transform;
* ``source``: run directory, checkpoint, objective, which module was exported, and the step.

For the masked JEPAs the exported encoder is the evaluation encoder (the EMA target unless
``objective.eval_encoder=context``); for ``h_jepa`` that is the level-1 ViT (higher levels are not exported).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from jepa_platform.checkpoints import find_checkpoint, load_checkpoint, load_run_config, resolve_run, trained_objective
from jepa_platform.encoders.timm_encoder import TimmEncoder
from jepa_platform.errors import CheckpointError, ConfigError
from jepa_platform.untrusted import check_targets

FORMAT = "jepa-platform-encoder/1"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jepa export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run directory (runs/<run>) or 'last' for the newest run under --runs-dir")
    p.add_argument("--ckpt", default=None, help="checkpoint file or sharded directory (default: the run's checkpoints/last.ckpt)")
    p.add_argument("--runs-dir", default="runs", help="where 'last' looks for runs (default: ./runs)")
    p.add_argument("--out", default=None, help="output file (default: <run>/encoder.pt)")
    p.add_argument("--force", action="store_true", help="replace an existing output file")
    return p


def export_record(run_dir: Path, ckpt: Path) -> dict[str, Any]:
    """The export dict of ``ckpt``, a checkpoint of the run in ``run_dir`` (see module docstring)."""
    cfg = load_run_config(run_dir)
    model, meta = trained_objective(cfg.objective, ckpt)
    encoder = model.export_encoder() if hasattr(model, "export_encoder") else model.encoder
    module = next((name for name, child in model.named_children() if child is encoder), "encoder")
    record: dict[str, Any] = {
        "format": FORMAT,
        "encoder_config": OmegaConf.to_container(cfg.encoder, resolve=True),
        "num_features": int(getattr(encoder, "num_features", 0)),
        "source": {
            "run_dir": str(run_dir.resolve()),
            "checkpoint": str(ckpt.resolve()),
            "objective": str(cfg.objective._target_),
            "module": module,
            "global_step": int(meta.get("global_step", -1)),
        },
    }
    record["input"] = input_spec(cfg)
    if isinstance(encoder, TimmEncoder):
        kwargs = dict(record["encoder_config"].get("model_kwargs") or {})
        record.update(
            timm_name=encoder.name,
            timm_kwargs={**kwargs, "in_chans": int(record["encoder_config"].get("in_chans", 3))},
            small_stem=bool(record["encoder_config"].get("small_stem", False)),
            state_dict={k: v.detach().cpu().clone() for k, v in encoder.model.state_dict().items()},
        )
    else:
        record["state_dict"] = {k: v.detach().cpu().clone() for k, v in encoder.state_dict().items()}
    return record


def _transform_steps(node: Any) -> list[dict[str, Any]]:
    """The steps of a transform config (a ``Compose`` or a single transform), as plain dicts."""
    node = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
    if not isinstance(node, dict):
        return []
    target = str(node.get("_target_", ""))
    if target.endswith("Steps"):  # data_modules.transforms.Steps: named steps, None left out
        return [step for name, step in node.items() if name != "_target_" and isinstance(step, dict)]
    return list(node.get("transforms") or []) if target.endswith("Compose") else [node]


def input_spec(cfg: Any) -> dict[str, Any]:
    """What the encoder expects as input, read from the run's evaluation transform (the one that makes the frozen
    features ``jepa eval`` reports), in timm's ``pretrained_cfg`` terms: ``input_size`` (C, H, W), ``mean`` and
    ``std`` of the ``Normalize`` applied to pixels scaled to [0, 1], ``interpolation`` and ``crop_mode``."""
    data = cfg.get("data") or {}
    steps = _transform_steps(data.get("eval_transform") or data.get("frame_transform"))
    channels = int(cfg.encoder.get("in_chans") or data.get("channels") or 3)
    normalize = next((t for t in steps if str(t.get("_target_", "")).endswith("Normalize")), None)
    size = data.get("image_size")
    resize = next((t for t in steps if str(t.get("_target_", "")).endswith(("Resize", "CenterCrop"))), None)
    if size is None and resize is not None:
        size = resize.get("size")
    hw = [int(size), int(size)] if isinstance(size, int) else [int(v) for v in size] if size else None
    mean = [float(v) for v in normalize["mean"]] if normalize else [0.0] * channels
    std = [float(v) for v in normalize["std"]] if normalize else [1.0] * channels
    return {
        "input_size": [channels, *hw] if hw else [channels],
        "mean": mean * channels if len(mean) == 1 and channels > 1 else mean,
        "std": std * channels if len(std) == 1 and channels > 1 else std,
        "value_range": [0.0, 1.0],
        "interpolation": "bilinear",
        "crop_mode": "center" if any(str(t.get("_target_", "")).endswith("CenterCrop") for t in steps) else "none",
    }


def preprocessing(spec: dict[str, Any]) -> nn.Module:
    """The torchvision transform that turns a uint8 image tensor ``(..., C, H, W)`` (or a float one in [0, 1]) into
    what an exported encoder expects: resize and centre-crop to its size, scale to [0, 1], normalise."""
    from torchvision.transforms import v2

    steps: list[nn.Module] = []
    if len(spec["input_size"]) == 3:
        size = spec["input_size"][1:]
        steps += [v2.Resize(min(size), antialias=True), v2.CenterCrop(size)]
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(spec["mean"], spec["std"])]
    return v2.Compose(steps)


def write_atomic(record: dict[str, Any], out: Path) -> None:
    """Write via a temporary file in the same directory and rename, so an existing file is never half-replaced."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.")
    os.close(fd)
    try:
        torch.save(record, tmp)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_exported(path: str | Path, with_preprocessing: bool = False) -> nn.Module | tuple[nn.Module, nn.Module]:
    """Rebuild the encoder of a ``jepa export`` file (``weights_only=True``), in eval mode; with ``with_preprocessing``,
    also the transform that makes its input from images (:func:`preprocessing` of the file's ``input`` record)."""
    record = load_checkpoint(Path(path))
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a jepa export file (format {FORMAT}): write one with jepa export <run>")
    if "timm_name" in record:
        config = record["encoder_config"]
        encoder = TimmEncoder(  # the architecture of the file; its weights below (never hub weights)
            record["timm_name"],
            pretrained=False,
            small_stem=record["small_stem"],
            in_chans=record["timm_kwargs"]["in_chans"],
            model_kwargs=config.get("model_kwargs"),
            channels_last=False,
        )
        encoder.model.load_state_dict(record["state_dict"])
    else:
        check_targets(record["encoder_config"], f"{path} (encoder_config)")
        encoder = instantiate(record["encoder_config"], _convert_="all")
        encoder.load_state_dict(record["state_dict"])
    if not with_preprocessing:
        return encoder.eval()
    if "input" not in record:
        raise CheckpointError(f"{path} was exported without its input record: export the run again with this version of jepa export")
    return encoder.eval(), preprocessing(record["input"])


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    run_dir = resolve_run(args.run, Path(args.runs_dir))
    ckpt = Path(args.ckpt) if args.ckpt else find_checkpoint(str(run_dir), run_dir, run_dir)
    out = Path(args.out) if args.out else run_dir / "encoder.pt"
    if out.exists() and not args.force:  # before the export's work, not after
        raise ConfigError(f"{out} exists: give another --out, or --force to replace it")
    record = export_record(run_dir, ckpt)
    write_atomic(record, out)
    n = sum(v.numel() for v in record["state_dict"].values())
    print(f"wrote {out}: {record['source']['module']} of {ckpt} ({n / 1e6:.2f}M parameters, step {record['source']['global_step']})")
    spec = record["input"]
    print(f"input: {'x'.join(map(str, spec['input_size']))}, pixels in [0, 1] normalised with mean {spec['mean']} and std {spec['std']}")
    print(f"load: encoder, preprocess = jepa_platform.export.load_exported('{out}', with_preprocessing=True), or torch.load(..., weights_only=True)")
    return 0
