"""What a run leaves in MLflow besides scalars: figures of its representation, its encoder as an MLflow model, and
system metrics. Each does nothing without an MLflow logger (``logger=none``) and only rank 0 writes.

- :class:`EmbeddingPlots`: after each validation (``plots/epoch<NNN>/``) and at the end (``plots/final/``): the
  correlation matrix of the validation representation, its singular-value spectrum with the effective rank, and
  the histogram of the per-sample energies of the epoch's training pairs (a sample of its steps), all ranks' (one series per level for H-JEPA), with
  the mean energy per level over epochs for objectives with several levels. The PNGs also stay in the run
  directory (``<run dir>/plots/``).
- :class:`EncoderModel`: the trained encoder as an MLflow ``pytorch`` model (``encoder/``, with an input example
  and its signature) that ``mlflow.pytorch.load_model("runs:/<run id>/encoder")`` loads. MLflow's pytorch flavour
  is a pickle: load models from stores you trust only (``jepa export`` writes a weights-only file instead).
- :class:`SystemMonitor`: ``perf/samples_per_sec`` (all ranks) each epoch, and ``system/*`` (CPU, memory, process
  memory, GPU memory and utilisation when present) on a logging step at most every ``every_n_seconds``, under the
  names MLflow's system metrics use, logged with ``pl_module.log`` like every value over steps, so they survive a
  tracking outage like any metric.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import shutil
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor

from jepa_platform.callbacks.cadence import logs_this_step
from jepa_platform.callbacks.evaluation import VAL_LOADER, EmbeddingMonitor, exposed
from jepa_platform.callbacks.progress import batch_samples
from jepa_platform.distributed import gather_rows
from jepa_platform.masking.collate import model_input
from jepa_platform.tracking.logger import log_artifacts, run_logger

log = logging.getLogger(__name__)


def rankme(singular_values: np.ndarray, eps: float = 1e-7) -> float:
    """RankMe effective rank of a spectrum (as :mod:`jepa_platform.metrics.embedding` computes it)."""
    sv = np.clip(np.asarray(singular_values, dtype=np.float64), 0, None)
    p = sv / max(sv.sum(), 1e-12) + eps
    return float(np.exp(-(p * np.log(p)).sum()))


class EmbeddingPlots(Callback):
    """PNG figures of the representation after each validation and at the end (module docstring).

    Args:
        max_energies: per-sample energies kept per level for the histogram (the epoch's latest ones).
        every_n_steps: the energies are read on every ``n``-th step and the epoch's last (``None``: every
            ``trainer.log_every_n_steps``); a histogram needs a sample of the epoch, and reading the energies of every
            step would compute what objectives hand over lazily on steps whose values are otherwise thrown away.
    """

    def __init__(self, max_energies: int, every_n_steps: int | None) -> None:
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError("callbacks.embedding_plots.every_n_steps must be >= 1 (or null: trainer.log_every_n_steps)")
        self.max_energies, self.every_n_steps = max_energies, every_n_steps
        self._energies: dict[str, deque[Tensor]] = {}
        self._kept_values: dict[str, int] = {}  # values kept per level (a running count: the hook runs every step)
        self._level_history: dict[str, list[tuple[int, float]]] = {}
        self._latest: Path | None = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._energies, self._kept_values = {}, {}

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        every = self.every_n_steps or trainer.log_every_n_steps
        if trainer.global_step % max(every, 1) and not trainer.is_last_batch:  # global_step already counts this step
            return
        for name, e in exposed(pl_module, "energies").items():
            # the latest batches whose values, the oldest one's left out, stay under max_energies
            kept = self._energies.setdefault(name, deque())
            kept.append(e.detach().reshape(-1))
            total = self._kept_values.get(name, 0) + kept[-1].numel()
            while len(kept) > 1 and total - kept[0].numel() >= self.max_energies:
                total -= kept.popleft().numel()
            self._kept_values[name] = total

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        # every rank hands its energies to rank 0 (the histogram is of the global batch); only rank 0 has the logger
        energies = {name: gather_rows(torch.cat(list(kept)).float()) for name, kept in sorted(self._energies.items()) if kept}
        if not trainer.is_global_zero or run_logger(trainer) is None:
            return
        out = Path(trainer.default_root_dir) / "plots" / f"epoch{trainer.current_epoch:03d}"
        if self._draw(trainer, out, energies):
            log_artifacts(trainer, out, f"plots/{out.name}")
            self._latest = out

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if run_logger(trainer) is None or self._latest is None or not self._latest.is_dir():
            return
        final = self._latest.parent / "final"
        shutil.rmtree(final, ignore_errors=True)
        shutil.copytree(self._latest, final)
        log_artifacts(trainer, final, "plots/final")

    def _draw(self, trainer: L.Trainer, out: Path, energies: dict[str, Tensor]) -> bool:
        from jepa_platform.tracking import figures

        monitor = next((c for c in trainer.callbacks if isinstance(c, EmbeddingMonitor)), None)
        drawn = False
        for name, metric in monitor.val_stats.items() if monitor else ():
            if metric.spectrum is None:
                continue
            label = "representation" if name == "features" else name
            stem = "repr" if name == "features" else name
            sv = metric.spectrum.numpy()
            figures.save(figures.correlation_heatmap(metric.correlation.numpy(), f"{label} correlation"), out / f"{stem}_correlation.png")
            figures.save(figures.singular_value_spectrum(sv, rankme(sv), f"{label} singular values"), out / f"{stem}_spectrum.png")
            metric.spectrum = metric.correlation = None  # drawn once
            drawn = True
        energies = {name: e.cpu().numpy() for name, e in energies.items()}
        if energies:
            figures.save(figures.energy_histogram(energies), out / "energy_histogram.png")
            for name, values in energies.items():
                self._level_history.setdefault(name, []).append((trainer.current_epoch, float(np.nanmean(values))))
            if len(energies) > 1:
                figures.save(figures.level_energies(self._level_history), out / "energy_levels.png")
            drawn = True
        return drawn


class EncoderModel(Callback):
    """Logs the trained encoder as an MLflow pytorch model at the end of a successful fit (module docstring).

    Args:
        artifact_path: where in the run's artifacts the model goes.
    """

    def __init__(self, artifact_path: str) -> None:
        self.artifact_path = artifact_path
        self._example: Tensor | None = None

    def on_validation_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if self._example is None and dataloader_idx == VAL_LOADER and isinstance(batch, dict):
            x = model_input(batch)[:2]
            x = x[:, 0] if x.dim() == 5 else x  # a clip model's encoder takes frames
            # two samples: torch.export specialises a batch dimension of 1, and the model would take only one image
            self._example = torch.cat([x, x])[:2].detach().float().cpu().clone()

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if run_logger(trainer) is None or self._example is None:
            return
        encoder = pl_module.export_encoder() if hasattr(pl_module, "export_encoder") else pl_module.encoder
        if any(type(p).__name__ == "DTensor" for p in encoder.parameters()):
            log.warning("encoder not logged as an MLflow model: it is sharded (FSDP); jepa export writes it as one file")
            return
        with tempfile.TemporaryDirectory() as tmp:
            try:
                path = save_encoder_model(encoder, self._example, Path(tmp) / "model")
            except Exception as exc:  # an encoder torch.export cannot trace: the run itself is fine
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
                log.warning("encoder not logged as an MLflow model (%s): jepa export writes it as one file", first)
                return
            log_artifacts(trainer, path, self.artifact_path)


def save_encoder_model(encoder: torch.nn.Module, example: Tensor, path: Path) -> Path:
    """Write ``encoder`` (a CPU copy, eval mode) as an MLflow pytorch model in the ``pt2`` format (``torch.export``:
    a graph and weights, not a pickle) with ``example`` as its input example and the signature of ``example`` ->
    features; requirements are pinned to this environment (no inference)."""
    import mlflow.pytorch
    import timm
    from mlflow.models import infer_signature

    from jepa_platform import __version__

    model = copy.deepcopy(encoder).float().cpu().eval()
    with torch.no_grad():
        features = model(example)
    signature = infer_signature(example.numpy(), features.numpy())
    requirements = [f"torch=={torch.__version__.split('+')[0]}", f"timm=={timm.__version__}", f"jepa-platform=={__version__}"]
    mlflow.pytorch.save_model(
        model, str(path), signature=signature, input_example=example.numpy(), pip_requirements=requirements, serialization_format="pt2"
    )
    return path


class SystemMonitor(Callback):
    """Throughput and system metrics through the run's logger (module docstring).

    Args:
        every_n_seconds: how often ``system/*`` is sampled during training.
    """

    def __init__(self, every_n_seconds: float) -> None:
        self.every_n_seconds = every_n_seconds
        self._epoch_start = self._last_batch_end = self._next_sample = 0.0
        self._samples = 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start = self._last_batch_end = time.perf_counter()
        self._samples = 0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._samples += batch_samples(batch) if isinstance(batch, dict) else 0
        self._last_batch_end = time.perf_counter()
        # sampled on steps that reach the logger (the others' values would never be seen), at most every_n_seconds
        if trainer.is_global_zero and time.monotonic() >= self._next_sample and logs_this_step(trainer):
            self._next_sample = time.monotonic() + self.every_n_seconds
            pl_module.log_dict(system_metrics(), on_step=True, on_epoch=False, rank_zero_only=True)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        seconds = self._last_batch_end - self._epoch_start  # training batches only, not the epoch's validation
        # every rank logs (the sum over ranks is a collective): the rate of all ranks together
        pl_module.log("perf/samples_per_sec", self._samples / max(seconds, 1e-9), reduce_fx="sum", sync_dist=trainer.world_size > 1)


def system_metrics() -> dict[str, float]:
    """CPU and memory of the machine and this process, and each visible GPU's memory (and utilisation when NVML
    is there), under MLflow's system-metric names."""
    import psutil

    memory = psutil.virtual_memory()
    out = {
        "system/cpu_utilization_percentage": psutil.cpu_percent(),
        "system/system_memory_usage_megabytes": (memory.total - memory.available) / 2**20,
        "system/system_memory_usage_percentage": memory.percent,
        "system/process_memory_rss_megabytes": psutil.Process().memory_info().rss / 2**20,
    }
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            out[f"system/gpu_{i}_memory_usage_megabytes"] = torch.cuda.memory_reserved(i) / 2**20
            with contextlib.suppress(Exception):  # no NVML (pynvml) on this machine: memory only
                out[f"system/gpu_{i}_utilization_percentage"] = float(torch.cuda.utilization(i))
    return out
