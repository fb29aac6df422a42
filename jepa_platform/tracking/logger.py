"""The MLflow logger of ``jepa train``: a run's history stays true through kills, resumes and failures.

:class:`RunLogger` is Lightning's ``MLFlowLogger`` plus what a pre-empted, resumed run needs:

* **one value per step**: a resumed run re-does the steps after its checkpoint; metrics the run already holds at
  those steps are not logged again (resume is exact, so they are the same values). Within an attempt too, a key is
  logged at most once per step (Lightning sends ``epoch`` with every batch of metrics);
* **honest status**: a run stopped by a signal is ``KILLED`` (:mod:`jepa_platform.signals`); a resume that fails before training its first step
  leaves the run's status as it was (a ``FINISHED`` run stays ``FINISHED``); a run whose process died without a word
  (``kill -9``, out of memory) is marked ``KILLED`` the next time a run starts on the same host
  (:func:`mark_dead_runs`); each resume is tagged ``resume.<n>.*`` with the checkpoint, its step and the status
  the run had;
* **fail fast**: an unreachable tracking server or an unwritable store is a one-line error before any training
  (:meth:`RunLogger.connect`), within ``connect_timeout`` seconds;
* **nothing lost mid-run**: once the run has started, a store that goes away does not stop training: writes wait
  in the run directory's outbox and are delivered exactly once when the store returns, or by ``jepa sync``
  (:mod:`jepa_platform.tracking.outbox`);
* **no wait for a remote store**: a logging step hands its values to a writer thread (one, so they arrive in order)
  and goes on (``write_in_thread``); :meth:`RunLogger.flush` waits for them, and runs before every checkpoint is written (``RunRecorder``) and
  before the run's status is set, so a checkpoint never holds a step whose values are not in the store.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only

from jepa_platform import signals
from jepa_platform.errors import ConfigError
from jepa_platform.tracking.outbox import Outbox, OutboxClient

log = logging.getLogger(__name__)
TERMINAL = ("FINISHED", "FAILED", "KILLED")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLogger(MLFlowLogger):
    """``MLFlowLogger`` with the guarantees of the module docstring.

    Args:
        connect_timeout: seconds to wait for a tracking server before failing (one line, before training).
        resume_step: the ``global_step`` of the checkpoint a resumed run starts from (``None``: a new run).
        resume_checkpoint: that checkpoint's path, recorded as a tag.
        outbox_dir: where writes wait while the store is unreachable (``None``: no outbox, failures raise).
        retry_every: seconds between attempts to deliver the outbox while the store is away.
        write_in_thread: write metrics from a thread (``auto``: for a remote server, whose writes are waits on the
            network; a local store's writes are CPU work that a thread would only move onto the next steps).
        request_timeout: seconds one HTTP request to a tracking server may take (MLflow's default is 120).
        request_retries: retries of a failed HTTP request before it counts as an outage (MLflow's default is 7,
            with exponential backoff: minutes of stalled training per write while a server is down).
        **kwargs: ``MLFlowLogger``'s arguments (``experiment_name``, ``tracking_uri``, ``run_id``, ``tags``...).
    """

    def __init__(
        self,
        connect_timeout: float,
        retry_every: float,
        request_timeout: float,
        request_retries: int,
        write_in_thread: bool | str,
        resume_step: int | None = None,
        resume_checkpoint: str | None = None,
        outbox_dir: str | Path | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        remote = str(self._tracking_uri).startswith(("http://", "https://", "databricks"))
        if write_in_thread not in (True, False, "auto"):
            raise ConfigError(f"logger.write_in_thread={write_in_thread!r}: use true, false or auto")
        self.write_in_thread = remote if write_in_thread == "auto" else bool(write_in_thread)
        self.connect_timeout = connect_timeout
        self.resume_step, self.resume_checkpoint = resume_step, resume_checkpoint
        self.outbox_dir, self.retry_every = (Path(outbox_dir) if outbox_dir else None), retry_every
        self._logged_until: dict[str, int] = {}
        self._previous_status: str | None = None
        self._trained = False
        self._outbox_client: OutboxClient | None = None
        self._writer: ThreadPoolExecutor | None = None
        self._queued: list[Future] = []
        if str(self._tracking_uri).startswith(("http://", "https://")):
            # read by MLflow at each request; a user's own setting wins
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(request_timeout)))
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(int(request_retries)))
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        """The MLflow client; with an outbox, its writes survive outages of the store."""
        client = MLFlowLogger.experiment.fget(self)
        if self.outbox_dir is None:
            return client
        if self._outbox_client is None:
            self._outbox_client = OutboxClient(
                client, Outbox(self.outbox_dir, str(self._tracking_uri), self._run_id), self.retry_every, self._warn_outage
            )
        return self._outbox_client

    def _warn_outage(self, exc: BaseException) -> None:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        print(
            f"warning: MLflow store {self._tracking_uri} unreachable ({first}); training goes on, records wait in {self.outbox_dir} "
            f"(retried every {self.retry_every:g} s, or upload later with: jepa sync {self.outbox_dir.parent})",
            file=sys.stderr,
        )

    @rank_zero_only
    def connect(self) -> None:
        """Check the store, create or reopen the run, tag it, and mark dead runs of this host (one-line errors)."""
        resuming = self._run_id is not None
        try:
            client = self.experiment
            if isinstance(client, OutboxClient) and client.pending:  # a previous attempt's undelivered records first
                client.flush()
            run = client.get_run(self.run_id)
        except ConfigError:
            raise
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ConfigError(
                f"cannot use the MLflow store {self._tracking_uri}: {first}: check logger.tracking_uri and its permissions, or use logger=none"
            ) from exc
        mark_dead_runs(client, self.experiment_id, skip=self.run_id)
        client.set_tag(self.run_id, "jepa.host", socket.gethostname())
        client.set_tag(self.run_id, "jepa.pid", str(os.getpid()))
        if resuming:
            self._previous_status = run.info.status
            self._logged_until = logged_steps(client, self.run_id)
            tags = run.data.tags
            n = int(tags.get("resume.count", "0")) + 1
            previous = "died without a status (RUNNING)" if run.info.status == "RUNNING" else run.info.status
            for key, value in {
                "resume.count": n,
                f"resume.{n}.from_step": self.resume_step,
                f"resume.{n}.from_checkpoint": self.resume_checkpoint,
                f"resume.{n}.previous_status": previous,
                f"resume.{n}.at": time.strftime("%Y-%m-%d %H:%M:%S"),
            }.items():
                client.set_tag(self.run_id, key, str(value))
            client.update_run(self.run_id, status="RUNNING")

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        step = step or 0
        fresh = {k: v for k, v in metrics.items() if step > self._logged_until.get(k, -1)}
        if fresh:
            self._trained = True
            self._submit(MLFlowLogger.log_metrics, self, fresh, step)
            self._logged_until.update(dict.fromkeys(fresh, step))

    def _submit(self, write: Callable[..., Any], *args: Any) -> None:
        """Queue ``write`` on the writer thread (or write now: ``write_in_thread`` off); a write that failed before is
        raised here (not lost)."""
        if not self.write_in_thread:
            write(*args)
            return
        if self._writer is None:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow-writer")
        still = []
        for future in self._queued:
            if future.done():
                future.result()
            else:
                still.append(future)
        self._queued = [*still, self._writer.submit(write, *args)]

    @rank_zero_only
    def flush(self) -> None:
        """Wait until every queued write has reached the store (or its outbox); raise the first that failed."""
        queued, self._queued = self._queued, []
        for future in queued:
            future.result()

    @rank_zero_only
    def finalize(self, status: str = "success") -> None:
        if not self._initialized:
            return
        self.flush()
        if status != "success" and signals.received():
            status = "KILLED"
        elif status != "success" and not self._trained and self._previous_status in TERMINAL:
            status = self._previous_status  # a resume that failed before training leaves the run as it was
        status = {"success": "FINISHED", "finished": "FINISHED", "failed": "FAILED"}.get(status, status)
        if self._checkpoint_callback:
            self._scan_and_log_checkpoints(self._checkpoint_callback)
        client = self.experiment
        client.set_terminated(self.run_id, status)  # a write: no read first, which would fail while the store is away
        if isinstance(client, OutboxClient) and client.pending and not client.flush():
            print(
                f"warning: MLflow store {self._tracking_uri} still unreachable: {client.pending} records of run {self.run_id} wait in "
                f"{self.outbox_dir}; upload them with: jepa sync {self.outbox_dir.parent}",
                file=sys.stderr,
            )


def run_logger(trainer: Any) -> MLFlowLogger | None:
    """The run's MLflow logger, or ``None`` (``logger=none``).

    One way in for each kind of record: values over steps go through ``self.log`` (the LightningModule's, or a
    callback's ``pl_module.log``); tags (what happened to the run) through :func:`set_tags`; files through
    :func:`log_artifacts`. Nothing else writes to the run during training."""
    return next((lg for lg in trainer.loggers if isinstance(lg, MLFlowLogger)), None)


def set_tags(trainer: Any, tags: Mapping[str, Any]) -> None:
    """Tag the run; call it from any rank (rank 0 writes; nothing without an MLflow logger)."""
    logger = run_logger(trainer)
    if logger is not None and trainer.is_global_zero:
        for key, value in tags.items():
            logger.experiment.set_tag(logger.run_id, key, str(value))


def log_artifacts(trainer: Any, local_dir: str | Path, artifact_path: str) -> None:
    """Upload the files under ``local_dir`` to ``artifact_path`` of the run (rank 0; through the outbox when the
    logger has one; nothing without an MLflow logger)."""
    logger = run_logger(trainer)
    if logger is not None and trainer.is_global_zero:
        logger.experiment.log_artifacts(logger.run_id, str(local_dir), artifact_path)


def logged_steps(client: Any, run_id: str) -> dict[str, int]:
    """The last step each metric of a run was logged at."""
    keys = client.get_run(run_id).data.metrics.keys()
    return {key: max((m.step for m in client.get_metric_history(run_id, key)), default=-1) for key in keys}


def mark_dead_runs(client: Any, experiment_id: str, skip: str | None = None) -> None:
    """Mark ``KILLED`` the RUNNING runs of ``experiment_id`` started on this host whose process no longer exists."""
    host = socket.gethostname()
    try:
        runs = client.search_runs([experiment_id], filter_string=f"attributes.status = 'RUNNING' and tags.`jepa.host` = '{host}'", max_results=200)
    except Exception as exc:  # an old store without tags: nothing to mark
        log.debug("cannot search for dead runs: %s", exc)
        return
    for run in runs:
        pid = run.data.tags.get("jepa.pid")
        if run.info.run_id != skip and pid and pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            client.set_tag(run.info.run_id, "jepa.died", "process ended without marking the run (kill -9, out of memory); found by a later run")
            client.set_terminated(run.info.run_id, "KILLED")
            print(f"marked MLflow run {run.info.run_id} KILLED: its process {pid} on {host} is gone", file=sys.stderr)


def log_to_run(run_dir: Path, metrics: dict[str, float], artifacts: Path | None = None, artifact_path: str | None = None) -> bool:
    """Log ``metrics`` (and the files under ``artifacts``) to the MLflow run that a run directory points to
    (``mlflow_run.json``); ``False`` (with a warning) when the run has none."""
    import json

    from jepa_platform.checkpoints import RUN_INFO

    info_file = Path(run_dir) / RUN_INFO
    if not info_file.is_file():  # trained with logger=none: MLflow is not even imported
        log.warning("no %s in %s (trained without MLflow): results not logged to MLflow", RUN_INFO, run_dir)
        return False
    import mlflow

    info = json.loads(info_file.read_text())
    client = mlflow.MlflowClient(tracking_uri=info["tracking_uri"])
    for key, value in metrics.items():
        client.log_metric(info["run_id"], key, value)
    if artifacts is not None:
        client.log_artifacts(info["run_id"], str(artifacts), artifact_path=artifact_path)
    return True
