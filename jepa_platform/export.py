"""``jepa export RUN``: the trained encoder of a run as one consolidated file for downstream use.

The file is a plain dict that loads with ``torch.load(path, weights_only=True)``, from a single-file or a sharded
(FSDP) checkpoint alike:

* ``state_dict``: the encoder's weights as full tensors; for timm encoders, with the keys of the timm model itself,
  so ``timm.create_model(timm_name, num_classes=0, **timm_kwargs).load_state_dict(state_dict)`` rebuilds it
  (unless ``small_stem`` is true: then use :func:`load_exported`);
* ``timm_name``, ``timm_kwargs`` (``model_kwargs`` plus ``in_chans``), ``small_stem``, ``num_features``;
* ``encoder_config``: the run's resolved ``encoder`` config (``_target_`` and arguments), for non-timm encoders;
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


def load_exported(path: str | Path) -> nn.Module:
    """Rebuild the encoder of a ``jepa export`` file (``weights_only=True``), in eval mode."""
    record = load_checkpoint(Path(path))
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a jepa export file (format {FORMAT}): write one with jepa export <run>")
    if "timm_name" in record:
        config = record["encoder_config"]
        encoder = TimmEncoder(
            record["timm_name"], small_stem=record["small_stem"], in_chans=record["timm_kwargs"]["in_chans"], model_kwargs=config.get("model_kwargs")
        )
        encoder.model.load_state_dict(record["state_dict"])
    else:
        check_targets(record["encoder_config"], f"{path} (encoder_config)")
        encoder = instantiate(record["encoder_config"], _convert_="all")
        encoder.load_state_dict(record["state_dict"])
    return encoder.eval()


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
    print(f"load: jepa_platform.export.load_exported('{out}'), or torch.load(..., weights_only=True)['state_dict']")
    return 0
