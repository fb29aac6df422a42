"""``jepa train``: build the DataModule, objective, callbacks, logger and Trainer from the config, then fit.

Every run gets its own directory (checkpoints, resolved config, log). Resuming (``ckpt_path=last`` or a path)
loads the checkpoint with ``weights_only=True`` and continues the MLflow run that wrote it.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.strategies import ModelParallelStrategy
from lightning.pytorch.trainer.states import TrainerStatus
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from torch.utils.data import default_collate

from jepa_platform import signals
from jepa_platform.callbacks.cadence import logged_on_host
from jepa_platform.callbacks.preemption import Preempted, Preemption
from jepa_platform.callbacks.progress import ProgressBar
from jepa_platform.callbacks.rng import RNGStates
from jepa_platform.checkpoints import (
    AtomicCheckpointIO,
    check_checkpoint_matches,
    check_same_objective,
    checkpoint_step,
    find_checkpoint,
    is_sharded,
    run_info_for,
    state_shapes,
)
from jepa_platform.config import build, job_config
from jepa_platform.errors import CheckpointError, JepaError, one_line
from jepa_platform.launch import global_rank, requeued
from jepa_platform.profiling import default_profiler
from jepa_platform.tracking import RunLogger, check_tracking_uri
from jepa_platform.tracking.outbox import OUTBOX_DIR
from jepa_platform.tracking.recorder import RunRecorder
from jepa_platform.tracking.sweeps import sweep_tags

log = logging.getLogger(__name__)

# Known-harmless warnings that would otherwise bury the useful output of every run.
for pattern in (
    r".*does not have many workers.*",
    r".*Your `IterableDataset` has `__len__` defined.*",
    r".*The number of training batches \(\d+\) is smaller than the logging interval.*",
    r".*Checkpoint directory .* exists and is not empty.*",
    # the data modules resume mid-epoch themselves (data_modules.datamodule.resume_position)
    r".*resuming from a checkpoint that ended before the epoch ended and your dataloader is not resumable.*",
    # epoch-level values under DDP/FSDP come from torchmetrics or gathered rows: already over all ranks
    r".*It is recommended to use `self.log\('(val|perf)/.*sync_dist=True.*",
):
    warnings.filterwarnings("ignore", message=pattern)


def _instantiate_callbacks(cfg: DictConfig | None) -> list[Callback]:
    if not cfg:
        return []
    return [build(node, f"callbacks.{name}") for name, node in cfg.items() if node is not None and node.get("_target_")]


def _resume_point(cfg: DictConfig, output_dir: Path) -> Path | None:
    if cfg.get("ckpt_path"):
        ckpt_path = find_checkpoint(str(cfg.ckpt_path), Path(cfg.paths.runs_dir), output_dir)
        log.info("resuming from %s", ckpt_path)
        return ckpt_path
    if any((output_dir / "checkpoints").glob("*.ckpt")):
        if requeued():  # a requeued SLURM job (pre-empted or timed out) continues where it stopped
            ckpt_path = find_checkpoint("last", Path(cfg.paths.runs_dir), output_dir)
            log.info("requeued SLURM job: resuming from %s", ckpt_path)
            return ckpt_path
        raise CheckpointError(
            f"{output_dir} already holds checkpoints of another run: resume it with ckpt_path=last, or start a new run "
            "with a new JEPA_RUN_ID / torchrun --rdzv-id"
        )
    return None


def _build_logger(cfg: DictConfig, ckpt_path: Path | None) -> Any:
    """The MLflow logger (rank 0 only), not yet connected: a resumed run continues the run that wrote the checkpoint;
    an unreachable or unwritable store is a one-line error here."""
    # Only rank 0 logs; building the logger on every rank would also race on a fresh MLflow store.
    if not (cfg.get("logger") and cfg.logger.get("_target_") and global_rank() == 0):
        return False
    extra: dict[str, Any] = {}
    previous = run_info_for(ckpt_path) if ckpt_path else None
    target = str(cfg.logger._target_)
    if previous and ("mlflow" in target.lower() or target.endswith("RunLogger")):
        extra["run_id"] = previous["run_id"]
    if target.endswith("RunLogger"):
        extra["outbox_dir"] = str(Path(cfg.paths.output_dir).resolve() / OUTBOX_DIR)
        if ckpt_path is not None:
            extra.update(resume_step=checkpoint_step(ckpt_path), resume_checkpoint=str(ckpt_path))
        else:  # a sweep's job: a child of the sweep's parent run
            tags = sweep_tags(str(cfg.logger.get("tracking_uri")))
            if tags:
                extra["tags"] = {**(cfg.logger.get("tags") or {}), **tags}
    if cfg.logger.get("tracking_uri"):
        check_tracking_uri(str(cfg.logger.tracking_uri), float(cfg.logger.get("connect_timeout", 15)))
    return build(cfg.logger, "logger", **extra)


def _objective_name(cfg: DictConfig) -> str:
    """The objective's config name (``vicreg``) when Hydra composed the run, else its class name."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        choice = HydraConfig.get().runtime.choices.get("objective")
        if choice:
            return str(choice)
    return str(cfg.objective.get("_target_", "?")).rsplit(".", 1)[-1]


def apply_gpu_defaults(cfg: DictConfig) -> None:
    """What a GPU run wants unless the config says otherwise: ``trainer.precision=auto`` (the ``ddp`` and ``fsdp``
    presets) becomes ``bf16-mixed`` on CUDA GPUs with bfloat16 and ``32-true`` elsewhere (CPU processes keep exact
    float32), and ``float32_matmul_precision`` (``high``: TF32 tensor cores for float32 matrix products) is set when
    CUDA is present. The resolved precision is what the run records."""
    import torch

    on_gpu = str(cfg.trainer.get("accelerator", "auto")) in ("gpu", "cuda") or (
        str(cfg.trainer.get("accelerator", "auto")) == "auto" and torch.cuda.is_available()
    )
    if cfg.trainer.get("precision") == "auto":
        with open_dict(cfg):
            cfg.trainer.precision = "bf16-mixed" if on_gpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "32-true"
    matmul = cfg.get("float32_matmul_precision")
    if matmul and torch.cuda.is_available():
        torch.set_float32_matmul_precision(str(matmul))


def run_train(cfg: DictConfig) -> dict[str, float]:
    """Fit the configured objective; return the final callback metrics."""
    output_dir = Path(cfg.paths.output_dir).resolve()
    apply_gpu_defaults(cfg)
    L.seed_everything(cfg.seed, workers=True)
    ckpt_path = _resume_point(cfg, output_dir)

    # one way: config -> objective -> data (handed the objective's collate: masks drawn in the loader workers) ->
    # callbacks -> logger; nothing built later reaches back into what was built before
    config = job_config(cfg)
    model = build(cfg.objective, "objective")
    user_collate = build(cfg.data.collate, "data.collate") if cfg.data.get("collate") else None
    datamodule = build(cfg.data, "data", collate=model.train_collate(user_collate or default_collate))
    previous_config = None
    if ckpt_path is not None:
        previous_config = check_same_objective(ckpt_path, model)
        check_checkpoint_matches(state_shapes(ckpt_path), model, ckpt_path)

    callbacks = _instantiate_callbacks(cfg.get("callbacks"))  # before the logger: a bad callback touches no run
    signals.clear()
    signals.install()
    logger = _build_logger(cfg, ckpt_path)
    recorder = RunRecorder(config, output_dir, ckpt_path is not None, _objective_name(cfg), previous=previous_config)
    callbacks = [*callbacks, RNGStates(), recorder]
    if cfg.trainer.get("enable_progress_bar", True) is not False:
        callbacks.append(ProgressBar(every_n_steps=int(cfg.trainer.get("log_every_n_steps") or 10)))
    trainer: L.Trainer = build(cfg.trainer, "trainer", callbacks=callbacks, logger=logger, **default_profiler(cfg.trainer))
    trainer.strategy.checkpoint_io = AtomicCheckpointIO()
    logged_on_host(trainer)  # a logging step's values reach the host in one transfer per device
    if ckpt_path is not None and is_sharded(ckpt_path) and not isinstance(trainer.strategy, ModelParallelStrategy):
        raise CheckpointError(
            f"{ckpt_path} is a sharded (FSDP) checkpoint: resume it with trainer=fsdp, or consolidate it first with "
            "python -m lightning.pytorch.utilities.consolidate_checkpoint <dir>"
        )
    if isinstance(logger, RunLogger):  # only now does the run open (or reopen) in MLflow: every check before touched none
        logger.connect()
    trainer.fit(model, datamodule=datamodule, ckpt_path=str(ckpt_path) if ckpt_path else None, weights_only=True)
    if trainer.state.status != TrainerStatus.FINISHED:
        raise JepaError(f"training stopped early ({trainer.state.status.value}): see the log above")
    if signals.received():  # a stop signal after the last step: the run is complete, the final evaluation is skipped
        _leave_process_group(trainer)
        stop = next((c.stop for c in trainer.callbacks if isinstance(c, Preemption) and c.stop), None)
        raise stop or Preempted(signals.received(), trainer.global_step, find_checkpoint("last", Path(cfg.paths.runs_dir), output_dir), False)

    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    _leave_process_group(trainer)
    if trainer.is_global_zero:
        _print_summary(metrics, output_dir, logger)
        if cfg.get("final_eval"):
            metrics.update(final_evaluation(cfg, model, datamodule, output_dir))
    return metrics


#: held-out episodes of the open-loop prediction test that ends a world model's run (``jepa predict`` takes 200)
FINAL_PREDICT_EPISODES = 50


def final_evaluation(cfg: DictConfig, model: Any, datamodule: Any, output_dir: Path) -> dict[str, float]:
    """``final_eval=true``, each objective next to its baseline: labelled data gets ``jepa eval`` (frozen linear
    probe and kNN, trained and randomly initialised); an action-conditioned world model gets ``jepa predict``'s
    open-loop prediction error on held-out episodes of its environment; anything else is said and skipped."""
    if getattr(datamodule, "num_classes", None):
        from jepa_platform.eval.cli import evaluate_run

        return evaluate_run(output_dir)
    if getattr(model, "needs_actions", False):
        from jepa_platform.world_model.prediction import main as predict

        predict([str(output_dir), "--episodes", str(FINAL_PREDICT_EPISODES), *(["--no-mlflow"] if not cfg.logger.get("_target_") else [])])
        return {}
    log.warning("final_eval=true: the data has no labels and %s is not an action-conditioned world model: nothing to evaluate", type(model).__name__)
    return {}


def _leave_process_group(trainer: L.Trainer) -> None:
    """After fit, all ranks leave the process group together: rank 0's final evaluation is then one process on the
    whole evaluation set (a data loader that still saw the group would read rank 0's half), and no rank waits on
    another that has already exited."""
    import torch.distributed as dist

    if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
        trainer.strategy.barrier("fit_done")
        dist.destroy_process_group()


def _print_summary(metrics: dict[str, float], output_dir: Path, logger: Any) -> None:
    shown = ("val/probe_acc", "val/knn_acc", "train/loss", "train/energy", "val/repr/rank", "emb/rank", "val/rollout_energy/h1", "val/state_error")
    keys = [k for k in shown if k in metrics]
    print("\nfinal: " + "  ".join(f"{k}={metrics[k]:.4f}" for k in keys))
    print(f"run directory: {output_dir}")
    if isinstance(logger, MLFlowLogger):
        print(f"MLflow run {logger.run_id} in {logger._tracking_uri}\n  browse: mlflow ui --backend-store-uri {logger._tracking_uri}")


def place_resumed_run(cfg: DictConfig, overrides: list[str]) -> None:
    """A resumed run continues in the run directory of its checkpoint (one run, one directory: its checkpoints,
    config and MLflow pointer stay together), with this attempt's Hydra files in ``.hydra/resume-<time>``."""
    spec = cfg.get("ckpt_path")
    if not spec or any(o.startswith("hydra.run.dir=") for o in overrides):  # a fresh run, or Lightning's own launch
        return
    ckpt = find_checkpoint(str(spec), Path(cfg.paths.runs_dir), Path(str(OmegaConf.select(cfg, "hydra.run.dir"))))
    run_dir = ckpt.resolve().parent.parent
    if ckpt.resolve().parent.name != "checkpoints" or not (run_dir / "config.yaml").is_file():
        return
    with read_write(cfg.hydra), open_dict(cfg.hydra):
        cfg.hydra.run.dir = str(run_dir)
        if global_rank() == 0:  # this attempt's Hydra files and log beside the run's, not over them
            stamp = f"{datetime.now().strftime('%Y-%m-%d_%H-%M-%S-%f')}-{os.getpid()}"  # unique per attempt
            cfg.hydra.output_subdir = f".hydra/resume-{stamp}"
            cfg.hydra.job.name = f"train-resume-{stamp}"


def task(args: list[str]) -> Callable[[DictConfig], None]:
    """The job of ``jepa train args``: fit, then exit with the status a scheduler expects (a one-line error: 2; a
    stop signal after its checkpoint: 128 + signal)."""
    # Lightning's launcher (trainer.devices > 1 without torchrun or SLURM) starts the other local ranks by re-running
    # sys.argv with Hydra's run directory appended: give it this command.
    launch_argv = [sys.argv[0], "train", *args]

    def _task(cfg: DictConfig) -> None:
        sys.argv = launch_argv
        try:
            run_train(cfg)
        except Preempted as exc:  # a checkpoint was saved: one line (rank 0), and the status schedulers expect
            if global_rank() == 0:
                print(f"jepa train: {exc}", file=sys.stderr)
            sys.exit(128 + exc.signum)
        except JepaError as exc:
            print(f"error: {one_line(exc)}", file=sys.stderr)
            sys.exit(2)

    return _task
