"""What ``jepa train`` needs to know about the launcher (torchrun, SLURM, Lightning's own) before Hydra starts.

Every process of a multi-process launch runs ``jepa train`` with the same arguments and composes its own config.
They must agree on one run directory: rank 0 writes the checkpoints, the resolved config and the MLflow pointer
there, and the other ranks write their checkpoint shards into the directory rank 0 names. :func:`run_stamp` names
the directory from an id every process of the launch shares (``$JEPA_RUN_ID``, torchrun's ``--rdzv-id``, the SLURM
job and step); without one it falls back to the start time, which processes on different nodes may not share, so
:func:`rank_overrides` gives the other ranks a throw-away Hydra directory instead of a stray one under ``runs/``.
"""

from __future__ import annotations

import os
import tempfile
from datetime import datetime
from functools import cache

from omegaconf import OmegaConf


def global_rank() -> int:
    """This process's rank as the launcher set it, before any process group exists: torchrun's ``RANK``, SLURM's
    ``SLURM_PROCID`` (several tasks), or for processes that Lightning's own launcher started, non-zero when
    ``LOCAL_RANK`` or ``NODE_RANK`` is (their exact global rank is not needed here)."""
    if "RANK" in os.environ:
        return int(os.environ["RANK"])
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in os.environ:
        return int(os.environ["SLURM_PROCID"])
    return max(int(os.environ.get("LOCAL_RANK", "0")), int(os.environ.get("NODE_RANK", "0")))


def requeued() -> bool:
    """Whether this is a SLURM job that was requeued (pre-empted, or requeued before its time limit): it resumes from
    its run directory's newest checkpoint by itself."""
    return int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0


def shared_run_id() -> str | None:
    """An id that every process of this launch sees, or ``None``."""
    if os.environ.get("JEPA_RUN_ID"):
        return os.environ["JEPA_RUN_ID"]
    rdzv = os.environ.get("TORCHELASTIC_RUN_ID")
    if rdzv and rdzv != "none":
        return rdzv
    if os.environ.get("SLURM_JOB_ID") and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        step = os.environ.get("SLURM_STEP_ID")
        return f"slurm{os.environ['SLURM_JOB_ID']}" + (f".{step}" if step else "")
    return None


@cache
def run_stamp() -> str:
    """The run directory's name stem: the shared launch id, else the start time (``%Y-%m-%d_%H-%M-%S``)."""
    return shared_run_id() or datetime.now().strftime("%Y-%m-%d_%H-%M-%S")


def first_set(value: object, default: object) -> object:
    """``value`` unless it is null: ``${first_set:${generated.num_train},20000}`` (conf/train.yaml, ``generated``)."""
    return default if value is None else value


def register_resolvers() -> None:
    """``${jepa_run_stamp:}`` for ``hydra.run.dir`` (conf/hydra/default.yaml) and ``${first_set:value,default}``."""
    OmegaConf.register_new_resolver("jepa_run_stamp", run_stamp, replace=True)
    OmegaConf.register_new_resolver("first_set", first_set, replace=True)


def rank_overrides(args: list[str]) -> list[str]:
    """Hydra overrides for ranks other than 0 of an external launch (torchrun, srun): no copy of the config and a
    log file of their own in the shared run directory, or a temporary Hydra directory when there is no shared id."""
    rank = global_rank()
    if rank == 0 or any(a.startswith("hydra.run.dir=") for a in args):  # rank 0, or Lightning's own launcher
        return []
    extra = ["hydra.output_subdir=null", f"hydra.job.name=train_rank{rank}"]
    if shared_run_id() is None:
        extra.append(f"hydra.run.dir={tempfile.mkdtemp(prefix=f'jepa-rank{rank}-')}")
    return extra
