"""``jepa surprise RUN [RUN ...]``: surprise at impossible events, scored by a model that predicts future frames.

For each run (a model trained on possible clips only), it rebuilds the objective from ``config.yaml``, loads the
checkpoint with ``weights_only=True``, and scores every pair of ``--pairs`` (default: the built-in intuitive-physics
pairs, generated on first use from the ``test`` split's seeds, never the training scenes): surprise over time of both
clips (windowing: :mod:`jepa_platform.surprise.scoring`), **pairwise accuracy** (the impossible clip has the higher
peak surprise) and **relative surprise**, per violation type and overall. The same model randomly initialised is
scored alongside (``--random-init``), the baseline a trained model has to beat. Several runs (e.g. a JEPA and the
pixel-space ``pixel_predictor`` trained on the same clips) go into one table.

Writes ``surprise.json`` (figures and every pair's curves), ``table.txt`` and figures of a few pairs per type
(frames, surprise curves, the violation frame marked) under ``RUN/surprise/<time>/``, and logs
``surprise/pairwise_acc``, ``surprise/pairwise_acc/<type>``, ``surprise/relative[/<type>]`` (and the same under
``surprise/random_init/``) and the figures to each run's MLflow run.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jepa_platform.checkpoints import find_checkpoint, load_run_config, resolve_run, trained_objective
from jepa_platform.config import build
from jepa_platform.errors import ConfigError, DataError
from jepa_platform.surprise import FuturePredictor
from jepa_platform.surprise.pairs import PairSet, first_difference, read_pairs
from jepa_platform.surprise.scoring import score_pairs, summarise, surprise_over_time

log = logging.getLogger(__name__)


@dataclass
class Scored:
    """One model's surprise curves ``(P, T)`` on the pairs and its summary."""

    name: str
    possible: np.ndarray
    impossible: np.ndarray
    summary: dict[str, dict[str, float]]
    seconds: float


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jepa surprise", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run directories (runs/<run>) of models that predict future frames, or 'last'")
    p.add_argument("--runs-dir", default=os.environ.get("JEPA_RUNS_DIR", "runs"), help="where 'last' looks (default: $JEPA_RUNS_DIR or ./runs)")
    p.add_argument("--pairs", default=None, help="pair shards (directory, pattern or URLs; docs/surprise.md); default: the built-in pairs")
    p.add_argument("--split", default="test", help="split of a --pairs dataset directory (default test)")
    p.add_argument("--pairs-per-type", type=int, default=200, help="pairs per violation type (default 200)")
    p.add_argument("--pairs-seed", type=int, default=0, help="seed of the built-in pairs (default 0)")
    p.add_argument("--context", type=int, default=None, help="context frames of a window (default: the model's; see --help of the module)")
    p.add_argument("--horizon", type=int, default=None, help="predicted frames of a window (default: the model's training horizon)")
    p.add_argument(
        "--random-init", choices=["compare", "only", "skip"], default="compare", help="also score the same model untrained (default compare)"
    )
    p.add_argument("--batch-size", type=int, default=256, help="windows per forward pass (default 256)")
    p.add_argument("--figures", type=int, default=2, help="pairs drawn per violation type (default 2)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--no-mlflow", action="store_true", help="do not log to the runs' MLflow runs")
    return p


def builtin_pairs(cfg: Any, args: argparse.Namespace) -> str:
    """The built-in pairs at the run's image size, under its data root (written on first use)."""
    from data_modules.builtin import ensure_intuitive_physics_pairs

    data = cfg.data
    root = data.get("root") or "data"
    size = int(data.get("image_size") or 32)
    length = int(data.get("length") or 24)
    return str(ensure_intuitive_physics_pairs(root, args.pairs_seed, args.pairs_per_type, size, length))


def window(model: Any, cfg: Any, args: argparse.Namespace, length: int) -> tuple[int, int]:
    """The context and horizon to score with: the arguments, else the model's own (its context ``None``: the run's clip
    length minus the horizon)."""
    context, horizon = model.surprise_window()
    horizon = args.horizon or horizon
    if args.context is not None:
        context = args.context
    elif context is None:
        clip = cfg.data.get("clip_length")
        if not clip:
            raise ConfigError("the run's data has no clip_length to size the windows: give --context")
        context = int(clip) - horizon
    if context < 1 or horizon < 1 or context + horizon > length:
        raise ConfigError(
            f"a window of {context} context + {horizon} predicted frames does not fit clips of {length} frames: set --context / --horizon"
        )
    return int(context), int(horizon)


def score_model(model: Any, pairs: PairSet, transform: Any, context: int, horizon: int, args: argparse.Namespace, name: str) -> Scored:
    """Surprise curves of every pair's two clips and the pairwise summary."""
    tic = time.perf_counter()
    model = model.to(args.device).eval()
    curves: dict[bool, list[np.ndarray]] = {False: [], True: []}
    for impossible in (False, True):
        for i in range(0, len(pairs.pairs), 64):
            chunk = pairs.pairs[i : i + 64]
            clips = [p.impossible if impossible else p.possible for p in chunk]
            if len({c.shape for c in clips}) > 1:
                curves[impossible].extend(_one_by_one(model, clips, chunk, transform, context, horizon, args, impossible))
                continue
            frames = transform(torch.stack(clips).flatten(0, 1)).unflatten(0, (len(clips), -1))
            actions = _actions(chunk, impossible)
            shared = [_shared_frames(p) for p in chunk] if impossible else None  # windows before the violation: the twin's
            scored = surprise_over_time(model, frames, context, horizon, args.batch_size, actions, shared)
            if shared is not None:
                for row, twin, first in zip(scored, curves[False][i : i + 64], shared, strict=True):
                    reach = min(max(first - horizon + 1, 0), len(row))
                    row[:reach] = twin[:reach]
            curves[impossible].extend(scored)
    possible, impossible_curves = _pad(curves[False]), _pad(curves[True])
    summary = summarise(score_pairs(possible, impossible_curves, [p.violation for p in pairs.pairs]), pairs.types)
    return Scored(name, possible, impossible_curves, summary, time.perf_counter() - tic)


def _shared_frames(pair: Any) -> int:
    """The first frame (or action step + 1) where a pair's two clips differ: windows ending before it are the same."""
    first = first_difference(pair.possible, pair.impossible)
    if pair.possible_actions is not None and pair.impossible_actions is not None:
        first = min(first, first_difference(pair.possible_actions, pair.impossible_actions) + 1)
    return first


def _actions(chunk: list, impossible: bool) -> torch.Tensor | None:
    acts = [p.impossible_actions if impossible else p.possible_actions for p in chunk]
    return torch.stack(acts) if all(a is not None for a in acts) else None


def _one_by_one(model, clips, chunk, transform, context, horizon, args, impossible) -> list[np.ndarray]:
    out = []
    for clip, pair in zip(clips, chunk, strict=True):
        actions = _actions([pair], impossible)
        out.extend(surprise_over_time(model, transform(clip).unsqueeze(0), context, horizon, args.batch_size, actions))
    return out


def _pad(curves: list[np.ndarray]) -> np.ndarray:
    length = max(len(c) for c in curves)
    return np.stack([np.pad(c, (0, length - len(c)), constant_values=np.nan) for c in curves])


def format_table(scored: list[Scored], types: list[str], pairs: PairSet) -> str:
    counts = {t: sum(p.violation == t for p in pairs.pairs) for t in types}
    columns = [*types, "overall"]
    width = max(12, *(len(c) + 2 for c in columns))
    name_width = max(24, *(len(s.name) + 2 for s in scored))
    lines = [
        "pairwise accuracy (impossible clip more surprising), % of pairs; relative surprise overall",
        f"{'model':<{name_width}}" + "".join(f"{c:>{width}}" for c in columns) + f"{'relative':>10}{'seconds':>9}",
        f"{'pairs':<{name_width}}" + "".join(f"{counts[t]:>{width}d}" for t in types) + f"{len(pairs.pairs):>{width}d}",
    ]
    lines.append("-" * len(lines[1]))
    for s in scored:
        accs = "".join(f"{100 * s.summary[c]['pairwise_acc']:>{width - 1}.1f}%" for c in columns)
        lines.append(f"{s.name:<{name_width}}{accs}{s.summary['overall']['relative']:>10.3f}{s.seconds:>9.0f}")
    return "\n".join(lines)


def metrics_of(scored: Scored, prefix: str) -> dict[str, float]:
    out = {}
    for group, figures in scored.summary.items():
        suffix = "" if group == "overall" else f"/{group}"
        for key in ("pairwise_acc", "relative"):
            if math.isfinite(figures[key]):
                out[f"{prefix}{key}{suffix}"] = figures[key]
    return out


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.pairs_per_type < 1 or args.batch_size < 1 or args.figures < 0:
        raise ConfigError("--pairs-per-type and --batch-size must be >= 1, --figures >= 0")
    runs = []
    for spec in args.runs:  # every run is checked before anything is generated or scored
        run_dir = resolve_run(spec, Path(args.runs_dir))
        cfg = load_run_config(run_dir)
        torch.manual_seed(int(cfg.get("seed") or 0))
        untrained = build(cfg.objective, "objective")
        if not isinstance(untrained, FuturePredictor):
            raise ConfigError(
                f"{run_dir} trained {type(untrained).__name__}, which does not predict future frames (no future_errors): "
                "score ac_jepa (action_dim=0), ema_jepa, h_jepa or pixel_predictor runs (docs/surprise.md)"
            )
        ckpt = find_checkpoint(str(run_dir), run_dir, run_dir) if args.random_init != "only" else None
        runs.append((run_dir, cfg, ckpt, untrained))
    pair_spec = args.pairs or builtin_pairs(runs[0][1], args)
    pairs = read_pairs(pair_spec, args.pairs_per_type, args.split)
    length = min(len(p.possible) for p in pairs.pairs)
    print(f"{len(pairs.pairs)} pairs from {pair_spec}: " + ", ".join(f"{t} {sum(p.violation == t for p in pairs.pairs)}" for t in pairs.types))

    windows = []
    for run_dir, cfg, _ckpt, untrained in runs:  # sizes and windows of every run are checked before any is scored
        size = int(cfg.data.get("image_size") or pairs.pairs[0].possible.shape[-1])
        if pairs.pairs[0].possible.shape[-1] != size:
            raise DataError(f"the pairs are {pairs.pairs[0].possible.shape[-1]} px, {run_dir} trained on {size} px: give pairs at the run's size")
        windows.append(window(untrained, cfg, args, length))

    all_scored: list[Scored] = []
    per_run: list[tuple[Path, dict[str, Scored], int, int]] = []
    for (run_dir, cfg, ckpt, untrained), (context, horizon) in zip(runs, windows, strict=True):
        transform = build(cfg.data.eval_transform, "data.eval_transform")
        models: dict[str, Scored] = {}
        if ckpt is not None:
            model, _ = trained_objective(cfg.objective, ckpt)
            models["trained"] = score_model(model, pairs, transform, context, horizon, args, f"{run_dir.name} ({type(model).__name__})")
        if args.random_init != "skip":
            models["random_init"] = score_model(untrained, pairs, transform, context, horizon, args, f"{run_dir.name} random init")
        all_scored.extend(models.values())
        per_run.append((run_dir, models, context, horizon))
        log.info("%s scored with a context of %d and a horizon of %d frames", run_dir, context, horizon)

    table = format_table(all_scored, pairs.types, pairs)
    print(table)
    for run_dir, models, context, horizon in per_run:
        out_dir = run_dir / "surprise" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
        write_results(out_dir, models, pairs, table, {**vars(args), "context": context, "horizon": horizon, "pairs": pair_spec}, args.figures)
        print(f"{run_dir}: results and figures in {out_dir}")
        if not args.no_mlflow:
            from jepa_platform.tracking import log_to_run

            metrics = {}
            for key, scored in models.items():
                metrics.update(metrics_of(scored, "surprise/" if key == "trained" else "surprise/random_init/"))
            if log_to_run(run_dir, metrics, out_dir, f"surprise/{out_dir.name}"):
                print(f"{run_dir}: logged surprise/* and the figures to the run's MLflow run")
    return 0


def write_results(out_dir: Path, models: dict[str, Scored], pairs: PairSet, table: str, setup: dict, figures: int) -> None:
    from jepa_platform.surprise.figures import pair_figure
    from jepa_platform.tracking.figures import save

    out_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "setup": {k: v for k, v in setup.items() if k not in ("runs",)},
        "results": {k: s.summary for k, s in models.items()},
        "seconds": {k: s.seconds for k, s in models.items()},
        "pairs": [
            {
                "pair_id": p.pair_id,
                "violation": p.violation,
                "variant": p.variant,
                "violation_frame": p.violation_frame,
                **{f"{k}/{side}": _json_curve(getattr(s, side)[i]) for k, s in models.items() for side in ("possible", "impossible")},
            }
            for i, p in enumerate(pairs.pairs)
        ],
    }
    (out_dir / "surprise.json").write_text(json.dumps(record))
    (out_dir / "table.txt").write_text(table + "\n")
    for t in pairs.types:
        shown = [i for i, p in enumerate(pairs.pairs) if p.violation == t][:figures]
        for i in shown:
            p = pairs.pairs[i]
            curves = {k: (s.possible[i], s.impossible[i]) for k, s in models.items()}
            fig = pair_figure(p.possible.numpy(), p.impossible.numpy(), curves, p.violation_frame, f"{t} ({p.variant}), pair {p.pair_id}")
            save(fig, out_dir / "figures" / f"{t}_{p.pair_id}.png")


def _json_curve(curve: np.ndarray) -> list[float | None]:
    return [None if math.isnan(v) else round(float(v), 6) for v in curve]
