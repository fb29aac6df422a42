"""Pre-emption: a stop signal saves a complete checkpoint at the next step boundary, then the run ends cleanly.

How a signal travels (:mod:`jepa_platform.signals`): inside the training loop the handler only records it. At each
optimiser step's end every rank contributes what it received to one max-reduction over ranks (a CPU tensor over a
gloo group: no device synchronisation), so all ranks see the signal at the same step even when only one process got
it (Lightning's own launcher signals rank 0 alone; SLURM and torchrun signal every rank, at slightly different
steps). All ranks then save ``last.ckpt`` together (sharded under FSDP), rank 0 tags the MLflow run
(``preempted.signal``, ``preempted.step``, ``preempted.checkpoint``; the logger then marks it ``KILLED``) and asks SLURM
to requeue the job when the signal is the time-limit warning (SIGUSR1) of a SLURM job. Every rank raises
:class:`Preempted` when the next step starts, once Lightning has logged the step just taken: Lightning shuts the
DataLoader workers down, and ``jepa train`` exits with one line and status 128 + signal. A signal after the last
step lets the run finish; ``jepa train`` then skips the final evaluation and exits the same way. A requeued job
(``SLURM_RESTART_COUNT`` > 0) resumes from the newest checkpoint of its run directory by itself; elsewhere
``jepa train ... ckpt_path=last`` continues exactly.

A checkpoint on the last batch of an epoch whose validation is still to run would be resumed in the next epoch,
skipping that validation: there the decision waits until the validation has run (a signal received during a
validation is acted on at its end too).
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.trainer.states import TrainerFn

from jepa_platform import signals
from jepa_platform.callbacks.checkpoint import ModelCheckpoint, validation_follows
from jepa_platform.distributed import world_size
from jepa_platform.errors import JepaError
from jepa_platform.host_syncs import host_side
from jepa_platform.tracking.logger import set_tags

log = logging.getLogger(__name__)


class Preempted(JepaError):
    """The run was stopped by a signal after saving a checkpoint; ``jepa train`` exits with ``128 + signum``."""

    def __init__(self, signum: int, step: int, checkpoint: Path | None, requeued: bool) -> None:
        self.signum, self.step, self.checkpoint, self.requeued = signum, step, checkpoint, requeued
        where = f"checkpoint saved at step {step}: {checkpoint}" if checkpoint else f"no checkpoint saved (step {step})"
        then = "the job was requeued and will resume from it" if requeued else "resume with the same command and ckpt_path=last"
        super().__init__(f"stopped by {signals.name(signum)}; {where}; {then}")


def slurm_job_id() -> str | None:
    """The id ``scontrol requeue`` takes for this SLURM job (``<array job>_<task>`` for an array task), else ``None``."""
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = f"{array}_{os.environ.get('SLURM_ARRAY_TASK_ID', '')}" if array else os.environ.get("SLURM_JOB_ID")
    return job if job and re.fullmatch(r"[0-9_]+", job) else None


class Preemption(Checkpoint):
    """Checkpoint and stop on SIGTERM, SIGUSR1, SIGINT or SIGHUP at a step boundary (module docstring).

    A ``Checkpoint`` callback, so that Lightning runs it after every other callback of the step (as it does
    ``ModelCheckpoint``): the EMA target's update of the step, for one, must be in the checkpoint.

    Args:
        check_every_n_steps: optimiser steps between two reads of the signal record (one tiny CPU collective each).
        requeue: ``auto``: ``scontrol requeue`` the SLURM job on a ``requeue_signals`` signal when running under
            SLURM; ``never``: leave requeueing to the scheduler.
        requeue_signals: signal names that ask for a requeue (SLURM's time-limit warning by default).
    """

    def __init__(self, check_every_n_steps: int, requeue: str, requeue_signals: tuple[str, ...]) -> None:
        if check_every_n_steps < 1:
            raise ValueError("callbacks.preemption.check_every_n_steps must be >= 1")
        if requeue not in ("auto", "never"):
            raise ValueError(f"callbacks.preemption.requeue={requeue!r} is not one of auto, never")
        self.every, self.requeue = check_every_n_steps, requeue
        self.requeue_signals = {int(signal.Signals[s]) for s in requeue_signals}
        self._group: Any = None
        self._last_step = -1
        #: the decided stop, raised when the next step starts (or by ``jepa train`` when training had ended)
        self.stop: Preempted | None = None

    # -- signal handling during fit ---------------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if world_size() > 1:
            # the record is a CPU tensor: on NCCL a gloo group reduces it without touching the GPU stream
            self._group = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else dist.group.WORLD

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # over the SIGTERM handler Lightning installs just before the fit loop starts: its handler forwards the signal
        # and broadcasts from inside the handler, a collective the other ranks are not in at that moment
        signals.install()
        signals.defer(True)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        signals.defer(False)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        signals.defer(False)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        signals.defer(False)

    def _signal_over_ranks(self) -> int:
        """The largest signal number any rank received (0: none). Every rank must call it at the same point."""
        if self._group is None:
            return signals.received()
        flag = torch.tensor([signals.received()], dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._group)
        with host_side():  # a CPU tensor reduced over the gloo side group: no device work to wait for
            return int(flag[0])

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        if self.stop is not None:  # decided and saved at the previous boundary; that step's metrics have been logged
            raise self.stop

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if self.stop is not None or step == self._last_step or step % self.every:  # accumulating, or not a checking step
            return
        self._last_step = step
        if batch_idx + 1 >= trainer.num_training_batches and validation_follows(trainer):
            return  # decided after the epoch's validation (module docstring)
        self._maybe_stop(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.stop is None and trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking:
            self._maybe_stop(trainer)

    # -- stopping -----------------------------------------------------------------------------------------------------
    def _maybe_stop(self, trainer: L.Trainer) -> None:
        """All ranks agree on a signal, save together and raise at the next step's start: Lightning has then logged
        the metrics of the step just taken, as the uninterrupted run does."""
        signum = self._signal_over_ranks()
        if not signum:
            return
        checkpoint = self._save(trainer)
        requeued = self._requeue(trainer, signum)
        set_tags(trainer, {"preempted.signal": signals.name(signum), "preempted.step": trainer.global_step, "preempted.checkpoint": checkpoint})
        signals.record(signum)  # when another rank got it: this process stops for the same reason
        self.stop = Preempted(signum, trainer.global_step, checkpoint, requeued)

    @staticmethod
    def _save(trainer: L.Trainer) -> Path | None:
        callback = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)), None)
        if callback is not None and callback.dirpath:
            return callback.save_last_now(trainer)
        path = Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"
        trainer.save_checkpoint(path)
        return path

    def _requeue(self, trainer: L.Trainer, signum: int) -> bool:
        job = slurm_job_id()
        if self.requeue != "auto" or job is None or signum not in self.requeue_signals:
            return False
        if not trainer.is_global_zero:
            return True
        try:
            done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.SubprocessError) as exc:
            log.warning("could not requeue SLURM job %s (%s): resume it with ckpt_path=last", job, exc)
            return False
        if done.returncode:
            log.warning("scontrol requeue %s failed (%s): resume it with ckpt_path=last", job, done.stderr.strip()[:200])
            return False
        return True
