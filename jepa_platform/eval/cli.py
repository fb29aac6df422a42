"""``jepa eval RUN``: linear-probe and kNN accuracy of a trained run's representation, next to the same model
randomly initialised and frozen (the baseline a self-supervised method has to beat).

It rebuilds the objective and data from the run's resolved ``config.yaml``, loads the checkpoint with
``weights_only=True``, and evaluates the objective's own representation (``forward``: the encoder's features;
the EMA target encoder for ``ema_jepa``; every level, concatenated, for ``h_jepa``). It logs ``eval/*`` metrics to
the run's MLflow run.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from jepa_platform.checkpoints import find_checkpoint, load_run_config, resolve_run, trained_objective
from jepa_platform.config import build
from jepa_platform.errors import ConfigError
from jepa_platform.eval.probe import extract_features, knn_accuracy, linear_probe_accuracy
from jepa_platform.tracking import log_to_run

log = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jepa eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run directory (runs/<run>) or 'last' for the newest run under --runs-dir")
    p.add_argument("--ckpt", default=None, help="checkpoint file (default: the run's checkpoints/last.ckpt)")
    p.add_argument("--runs-dir", default="runs", help="where 'last' looks for runs (default: ./runs)")
    p.add_argument(
        "--random-init",
        choices=["compare", "only", "skip"],
        default="compare",
        help="also evaluate the same encoder randomly initialised (compare), only that (only), or not (skip)",
    )
    p.add_argument("--train-samples", type=int, default=10000, help="labelled training samples for the probe and kNN bank")
    p.add_argument("--knn-k", type=int, default=20)
    p.add_argument("--weight-decay", type=float, default=1e-4, help="L2 penalty of the logistic-regression probe")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--no-mlflow", action="store_true", help="do not log the results to the run's MLflow run")
    return p


def evaluate(encoder: torch.nn.Module, datamodule, num_classes: int, args: argparse.Namespace) -> dict[str, float]:
    train_x, train_y = extract_features(encoder, datamodule.eval_dataloader("train", limit=args.train_samples), args.device)
    val_x, val_y = extract_features(encoder, datamodule.eval_dataloader("val"), args.device)
    return {
        "linear_probe_acc": linear_probe_accuracy(train_x, train_y, val_x, val_y, num_classes, args.weight_decay),
        "knn_acc": knn_accuracy(train_x, train_y, val_x, val_y, num_classes, args.knn_k),
    }


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    run_dir = resolve_run(args.run, Path(args.runs_dir))
    evaluate_run(run_dir, args)
    return 0


def evaluate_run(run_dir: Path, args: argparse.Namespace | None = None) -> dict[str, float]:
    """``jepa eval`` on one run directory (``args``: the parsed options, default: ``jepa eval``'s defaults): prints
    the table, writes ``eval.json`` and logs the ``eval/*`` metrics to the run's MLflow run (unless ``no_mlflow``).
    ``jepa train final_eval=true`` calls it when training ends, so that a sweep's runs carry their frozen-probe
    results and ``jepa compare`` tabulates them."""
    args = args or _parser().parse_args([str(run_dir)])
    cfg = load_run_config(run_dir)
    datamodule = build(cfg.data, "data")
    num_classes = getattr(datamodule, "num_classes", None)
    if not num_classes:
        raise ConfigError(f"{run_dir}: its data has no classes (data.num_classes, or a manifest with classes): evaluation needs labelled data")
    datamodule.prepare_data()
    datamodule.setup("validate")

    results: dict[str, float] = {}
    if args.random_init != "only":
        ckpt = Path(args.ckpt) if args.ckpt else find_checkpoint(str(run_dir), run_dir, run_dir)
        torch.manual_seed(cfg.seed)
        results.update({f"eval/{k}": v for k, v in evaluate(trained_objective(cfg.objective, ckpt)[0], datamodule, num_classes, args).items()})
    if args.random_init != "skip":
        torch.manual_seed(cfg.seed)
        model = build(cfg.objective, "objective")
        results.update({f"eval/random_init/{k}": v for k, v in evaluate(model, datamodule, num_classes, args).items()})
    for metric in ("linear_probe_acc", "knn_acc"):
        if f"eval/{metric}" in results and f"eval/random_init/{metric}" in results:
            results[f"eval/gain/{metric}"] = results[f"eval/{metric}"] - results[f"eval/random_init/{metric}"]

    _report(results, run_dir)
    if not args.no_mlflow:
        _log_mlflow(results, run_dir)
    return results


def _report(results: dict[str, float], run_dir: Path) -> None:
    print(f"\nfrozen-encoder evaluation of {run_dir}")
    print(f"{'encoder':<14}{'linear probe':>14}{'kNN':>10}")
    for name, prefix in (("trained", "eval/"), ("random init", "eval/random_init/")):
        if f"{prefix}linear_probe_acc" in results:
            print(f"{name:<14}{results[prefix + 'linear_probe_acc']:>14.4f}{results[prefix + 'knn_acc']:>10.4f}")
    if "eval/gain/linear_probe_acc" in results:
        print(f"trained minus random init (linear probe): {100 * results['eval/gain/linear_probe_acc']:+.1f} points")
    (run_dir / "eval.json").write_text(json.dumps(results, indent=2))


def _log_mlflow(results: dict[str, float], run_dir: Path) -> None:
    if log_to_run(run_dir, results):
        print(f"logged {', '.join(results)} to the run's MLflow run")
