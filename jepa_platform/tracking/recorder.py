"""What a run records about itself in MLflow before its first step: the resolved config, the code and where the run
lives, so that ``jepa compare`` groups it, and ``jepa eval`` and a resume find it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import OmegaConf

from jepa_platform.checkpoints import RUN_INFO
from jepa_platform.config import flatten
from jepa_platform.tracking.store import git_state


class RunRecorder(Callback):
    """Records the resolved config in MLflow (flattened params and a YAML artifact), the source's git commit and dirty
    flag and the objective's name as tags, and leaves a pointer to the MLflow run in the run directory, so that
    resuming and ``jepa eval`` find the run.

    A resumed run keeps the run directory's ``config.yaml`` (the config that built the checkpoints) and tags in MLflow
    only the values that really changed (``resume.<key>``), compared with that file rather than with MLflow's
    params, which the store may have cut short."""

    #: keys that differ on every resume by construction (recorded in ``resume.<n>.*`` tags instead)
    PER_ATTEMPT = ("ckpt_path",)

    def __init__(self, config: dict[str, Any], output_dir: Path, resumed: bool, objective: str, previous: dict[str, Any] | None = None) -> None:
        self.config, self.output_dir, self.resumed, self.previous, self.objective = config, output_dir, resumed, previous, objective

    @rank_zero_only
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        config_file = self.output_dir / "config.yaml"
        if not (self.resumed and config_file.is_file()):
            config_file.write_text(OmegaConf.to_yaml(self.config))
        logger = trainer.logger
        if not isinstance(logger, MLFlowLogger):
            return
        client, run_id = logger.experiment, logger.run_id  # reads what the run holds, to record only what changed
        params = {k: str(v)[:6000] for k, v in flatten(self.config).items()}
        run = client.get_run(run_id) if self.resumed else None
        existing = run.data.params if run else {}
        logger.log_hyperparams({k: v for k, v in params.items() if k not in existing})
        if self.resumed:
            before = {k: str(v)[:6000] for k, v in flatten(self.previous).items()} if self.previous is not None else existing
            for key, value in params.items():
                old = before.get(key)
                cut = self.previous is None and old is not None and value.startswith(old)  # the store cut the param short
                if key in existing and old != value and not cut and key not in self.PER_ATTEMPT:
                    client.set_tag(run_id, f"resume.{key}", value[:5000])
        client.log_artifact(run_id, str(config_file), artifact_path=f"config/{self.output_dir.name}")
        client.set_tag(run_id, "run_dir", str(self.output_dir))
        tags = run.data.tags if run else {}
        for key, value in {**git_state(), "jepa.objective": self.objective}.items():  # a resume from other code: resume.<tag>
            if tags.get(key) != value:
                client.set_tag(run_id, f"resume.{key}" if key in tags else key, value)
        info = {"run_id": run_id, "experiment_id": logger.experiment_id, "tracking_uri": logger._tracking_uri}
        (self.output_dir / RUN_INFO).write_text(json.dumps(info, indent=2))

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        """Before a checkpoint is written, the values of the steps it holds are in the store (the logger writes them
        from a thread): a run killed after the checkpoint does not lose them (its resume starts after them)."""
        flush = getattr(trainer.logger, "flush", None)
        if callable(flush):
            flush()
