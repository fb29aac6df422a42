"""Is an interrupted-and-resumed run the run it would have been? The comparison of ``benchmarks/faults.py`` (kill -9)
and of the pre-emption tests (SIGTERM), on the run directories and MLflow stores that ``jepa train`` leaves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: metrics that are not the training's history: the machine (``system/*``, ``perf/*``) and evaluations after it
NOT_TRAINING = ("system/", "perf/", "eval/", "predict/", "plan/", "surprise/")


def _final_checkpoint(run_dir: Path) -> dict[str, Any]:
    """``last.ckpt`` (a file, or a sharded directory read into full tensors) as ``{"state_dict", "global_step"}``."""
    from jepa_platform.checkpoints import read_checkpoint

    state, meta = read_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    return {"state_dict": state, "global_step": meta["global_step"]}


def metric_history(store: Path, experiment: str = "jepa") -> tuple[str, dict[str, list[tuple[int, float]]], dict[str, str]]:
    """Status, ``{metric: [(step, value), ...]}`` and tags of the newest run of ``experiment`` in ``store/mlflow.db``
    (an attempt killed before its first checkpoint leaves a run of its own; the attempt after it starts anew)."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{store}/mlflow.db")
    run = client.search_runs([client.get_experiment_by_name(experiment).experiment_id], order_by=["attributes.start_time DESC"])[0]
    history = {k: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, k)) for k in run.data.metrics}
    return run.info.status, history, run.data.tags


def same_training(run_dir: Path, reference_dir: Path) -> str:
    """``""`` when ``run_dir`` (resumed) ended exactly as ``reference_dir`` (never interrupted): the same final step
    and weights, tensor for tensor, and in MLflow (each run's store beside its directory) one value per step for every
    metric, equal to the reference's, and status ``FINISHED``; else what differs. :data:`NOT_TRAINING` is left out;
    learning rates are compared by value only where logged."""
    import torch

    a, b = _final_checkpoint(run_dir), _final_checkpoint(reference_dir)
    differ = [k for k in b["state_dict"] if k not in a["state_dict"] or not torch.equal(a["state_dict"][k], b["state_dict"][k])]
    if a["global_step"] != b["global_step"] or differ:
        return f"final step {a['global_step']} vs {b['global_step']}, {len(differ)} of {len(b['state_dict'])} tensors differ"
    status, hist, _ = metric_history(run_dir.parent)
    _, ref_hist, _ = metric_history(reference_dir.parent)
    duplicated = {k: len(v) - len({s for s, _ in v}) for k, v in hist.items() if len(v) != len({s for s, _ in v})}
    if duplicated:
        return f"steps logged twice: {duplicated}"
    compared = [k for k in ref_hist if k in hist and not k.startswith(NOT_TRAINING)]
    unequal = [k for k in compared if not k.startswith("lr-") and [s for s, _ in hist[k]] != [s for s, _ in ref_hist[k]]]
    values = [k for k in compared if hist[k] != ref_hist[k] and not k.startswith("lr-")]
    missing = [k for k in ref_hist if k not in hist and not k.startswith(NOT_TRAINING)]
    if status != "FINISHED":
        return f"run status {status}"
    if unequal or values or missing:
        return f"metric histories differ: steps {unequal[:3]}, values {values[:3]}, missing {missing[:3]}"
    return ""
