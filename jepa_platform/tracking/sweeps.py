"""Sweeps as one MLflow parent run: ``jepa train -m objective=vicreg,barlow seed=0,1`` nests its jobs' runs.

:class:`SweepRecorder` is a Hydra callback (``conf/hydra/default.yaml``), so it runs in the process that launches
the sweep, whatever the launcher. At the start it opens a parent run in the sweep's experiment, tagged
``jepa.sweep=parent``, with the sweep's command-line overrides as a param and tag; each job's run (see
:func:`sweep_tags`) carries ``mlflow.parentRunId`` (MLflow's UI nests it), ``jepa.sweep`` (the parent's id) and its
own overrides (``jepa.sweep.overrides``), so ``jepa compare --sweep <parent id>`` finds the jobs and groups them by
what varied (seeds apart). At the end it logs ``jepa compare``'s table and curves to the parent run.

The parent's id reaches the jobs through the environment (``JEPA_SWEEP_RUN_ID``, inherited by in-process,
joblib and SLURM jobs alike) and a ``mlflow_sweep.json`` in the sweep directory.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from jepa_platform.errors import JepaError, one_line

log = logging.getLogger(__name__)
SWEEP_ENV, SWEEP_URI_ENV = "JEPA_SWEEP_RUN_ID", "JEPA_SWEEP_TRACKING_URI"
SWEEP_FILE = "mlflow_sweep.json"


def _job_overrides() -> tuple[list[str], int | None, Path | None]:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return [], None, None
    hc = HydraConfig.get()
    sweep_dir = Path(str(hc.sweep.dir)) if getattr(hc.mode, "name", None) == "MULTIRUN" else None  # no mode: composed by hand
    return list(hc.overrides.task), hc.job.get("num"), sweep_dir


def sweep_tags(tracking_uri: str) -> dict[str, str]:
    """Tags that make this job's run a child of its sweep's parent run (empty outside a sweep, or when the sweep
    logs to another store)."""
    overrides, num, sweep_dir = _job_overrides()
    parent, uri = os.environ.get(SWEEP_ENV), os.environ.get(SWEEP_URI_ENV)
    if not parent and sweep_dir is not None and (sweep_dir / SWEEP_FILE).is_file():
        info = json.loads((sweep_dir / SWEEP_FILE).read_text())
        parent, uri = info.get("run_id"), info.get("tracking_uri")
    if not parent or uri != tracking_uri or sweep_dir is None:
        return {}
    return {
        "mlflow.parentRunId": parent,
        "jepa.sweep": parent,
        "jepa.sweep.job": str(num),
        "jepa.sweep.overrides": " ".join(overrides)[:5000],
    }


class SweepRecorder(Callback):
    """Hydra callback: one MLflow parent run per sweep, with the comparison of its jobs logged at the end."""

    def __init__(self) -> None:
        self.run_id: str | None = None
        self.tracking_uri: str | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        logger = config.get("logger")
        if not logger or not logger.get("_target_") or not logger.get("tracking_uri"):
            return  # logger=none: nothing to group
        from mlflow import MlflowClient

        from jepa_platform.tracking.store import check_tracking_uri, git_state

        uri, name = str(logger.tracking_uri), str(logger.get("experiment_name", "jepa"))
        overrides = " ".join(OmegaConf.select(config, "hydra.overrides.task") or [])
        try:
            check_tracking_uri(uri, float(logger.get("connect_timeout", 15)))
            client = MlflowClient(uri)
            experiment = client.get_experiment_by_name(name)
            experiment_id = (
                experiment.experiment_id if experiment else client.create_experiment(name, artifact_location=logger.get("artifact_location"))
            )
            tags = {
                "jepa.sweep": "parent",
                "jepa.sweep.overrides": overrides[:5000],
                "jepa.host": socket.gethostname(),
                "jepa.pid": str(os.getpid()),
                **git_state(),
            }
            run = client.create_run(experiment_id, run_name=f"sweep-{time.strftime('%Y-%m-%d_%H-%M-%S')}", tags=tags)
            client.log_param(run.info.run_id, "sweep.overrides", overrides[:6000])
        except JepaError as exc:
            print(f"error: {one_line(exc)}", file=sys.stderr)
            sys.exit(2)
        self.run_id, self.tracking_uri = run.info.run_id, uri
        os.environ[SWEEP_ENV], os.environ[SWEEP_URI_ENV] = self.run_id, uri
        sweep_dir = Path(str(config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / SWEEP_FILE).write_text(json.dumps({"run_id": self.run_id, "tracking_uri": uri}, indent=2))
        print(f"sweep: MLflow parent run {self.run_id} in {uri} (jepa compare --sweep {self.run_id})")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.run_id is None:
            return
        from mlflow import MlflowClient

        from jepa_platform.tracking.compare import compare, log_comparison, write_comparison

        os.environ.pop(SWEEP_ENV, None)
        os.environ.pop(SWEEP_URI_ENV, None)
        client = MlflowClient(self.tracking_uri)
        try:
            with tempfile.TemporaryDirectory() as tmp:
                result = compare(client, sweep=self.run_id)
                print("\n" + result.table("markdown"))
                write_comparison(client, result, Path(tmp))
                log_comparison(client, self.run_id, Path(tmp))
        except JepaError as exc:  # e.g. every job failed: nothing to compare, the sweep still ends
            print(f"warning: no comparison logged to the sweep's parent run: {one_line(exc)}", file=sys.stderr)
        client.set_terminated(self.run_id, "FINISHED")
