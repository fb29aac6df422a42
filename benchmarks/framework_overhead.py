"""Framework overhead at GPU scale: what the platform adds to a training step whose model costs well under a
millisecond, where on a GPU the Python around the step, not the model, sets the pace.

For every registered objective, a tiny version of its debug recipe (a one-block ViT of width 16 on 8 px inputs for
image objectives, 16 px for the masked JEPAs, whose masks need an 8x8 token grid; a 3-layer convnet of width 4 on
8 px frames for world models; SIGReg with 64 directions; batch 16) is trained through ``trainer.fit`` as
``jepa train`` builds it: the default callbacks (online probe, embedding statistics, kNN, collapse monitor,
non-finite guard, EMA, data health, system monitor, plots, pre-emption), the MLflow logger (a local sqlite store),
the LR schedule, ``log_every_n_steps=10``. Against it, the same model, optimiser and EMA update in a bare loop on the
same pre-made batches (no data loading in either). Steps are timed from one batch start to the next; ``overhead`` is
the median over the steps that do not log, ``mean overhead`` their mean (the online probe trains on every 4th
step), and the last column the mean over the steps that log; of the interleaved rounds, each side's fastest (by
its median). ``in place`` is the same overhead taken inside the platform's run: each step's time minus the time of
the model's own work in that step (the parts the bare loop runs, timed where they run: ``benchmarks.step_overhead.
ModelTimes``), median over the quiet steps, the smallest of the rounds. It needs no second loop, so a machine whose
speed drifts between rounds does not move it; it leaves out any slowing of the model's own work by what runs
around it (caches), which ``overhead`` includes. Target: overhead <= 1 ms per step that does not log.

One torch thread by default (``--threads``): a GPU's host side is one Python thread, and on this 2-core machine a
second intra-op thread makes every small kernel wait for whichever core the logger's or the system monitor's thread
has just taken, which moved single figures by +-0.5 ms between runs (with one thread they repeat within 0.05 ms).

    python -m benchmarks.framework_overhead [--objectives vicreg,ac_jepa] [--steps 60] [--rounds 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch
from omegaconf import open_dict

from benchmarks.step_overhead import ModelTimes, bare_steps, platform_steps
from jepa_platform.config import build, compose_config
from jepa_platform.registry import OBJECTIVES
from jepa_platform.testing import encoder_overrides, objective_batch

LOG_EVERY = 10
#: the tiny model of each kind of debug recipe
TINY = {
    "debug=fast": [
        "encoder=vit_test",
        "+encoder.model_kwargs.embed_dim=16",
        "encoder.model_kwargs.patch_size=2",
        "+encoder.model_kwargs.depth=1",
        "+encoder.model_kwargs.num_heads=1",
        "+encoder.model_kwargs.mlp_ratio=1",
        "objective.projector_dims=[16,16]",
    ],
    "debug=fast_vit": [
        "data.image_size=16",  # an 8x8 token grid: the masks (and H-JEPA's 2x2 cells) need more than 4x4
        "+encoder.model_kwargs.embed_dim=16",
        "encoder.model_kwargs.patch_size=2",
        "+encoder.model_kwargs.depth=1",
        "+encoder.model_kwargs.num_heads=1",
        "+encoder.model_kwargs.mlp_ratio=1",
    ],
    "debug=fast_wm": ["encoder.channels=[4,4,4]", "encoder.embed_dim=16", "objective.predictor.hidden=16"],
}


#: narrow one-block predictors for the objectives that have them (their recipes' are several blocks of width 96)
ONE_BLOCK = ["objective.predictor_dim=16", "objective.predictor_depth=1", "objective.predictor_heads=1"]
TINY_OBJECTIVE = {
    # SIGReg's random directions are its width: the recipe's 1024 (for 128-wide embeddings) would be 64 per dimension
    # of these 16-wide ones, and their projections (16 x 1024 x 17 knots, cos and sin) made lejepa's step 9 ms here,
    # whose memory traffic slowed the Python around it (1.13 ms of overhead in place against 0.58-0.73 with 64)
    "lejepa": ["objective.regulariser.num_slices=64"],
    "ema_jepa": ONE_BLOCK,
    "pixel_predictor": ONE_BLOCK,
    "h_jepa": [
        *(f"objective.levels.{k}.predictor_{key}={value}" for k in (0, 1) for key, value in (("dim", 16), ("depth", 1), ("heads", 1))),
        "objective.levels.1.dim=16",
        "objective.levels.1.depth=1",
        "objective.levels.1.heads=1",
    ],
}


def tiny_config(name: str, runs: Path, batch_size: int, steps: int, extra: tuple[str, ...] = ()) -> Any:
    debug = encoder_overrides(name)[0]
    return compose_config(
        [
            debug,
            f"objective={name}",
            "callbacks=default",
            "data.image_size=8",
            *TINY[debug],
            *TINY_OBJECTIVE.get(name, []),
            f"data.batch_size={batch_size}",
            f"++trainer.max_steps={steps}",
            "++trainer.max_epochs=1",
            "++trainer.limit_val_batches=0",
            "++trainer.enable_progress_bar=false",
            f"trainer.log_every_n_steps={LOG_EVERY}",
            f"paths.runs_dir={runs}",
            *extra,
        ],
        output_dir=str(runs / name),
    )


def quiet(times: list[float], warmup: int) -> list[float]:
    """The step times of steps that do not log (Lightning logs steps ``k * LOG_EVERY - 1`` and the last)."""
    return [t for i, t in enumerate(times) if i >= warmup and (i + 1) % LOG_EVERY and i != len(times) - 1]


def logging(times: list[float], warmup: int) -> list[float]:
    return [t for i, t in enumerate(times) if i >= warmup and ((i + 1) % LOG_EVERY == 0 or i == len(times) - 1)]


def measure(name: str, batch_size: int, steps: int, rounds: int, warmup: int, extra: tuple[str, ...] = ()) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = tiny_config(name, Path(tmp) / "runs", batch_size, steps, extra)
        with open_dict(cfg):
            if cfg.callbacks.get("online_probe") is not None:
                cfg.callbacks.online_probe.num_classes = 10
        model = build(cfg.objective, "objective")
        batches = [objective_batch(model, batch_size, seed=i, image_size=int(cfg.data.image_size)) for i in range(steps)]
        # each side's fastest round: the machine's noise only ever slows a round down, and picking one round by its
        # overhead would pick the round whose bare loop happened to be slowed
        rounds_platform, rounds_bare, rounds_in_place = [], [], []
        for _ in range(rounds):
            timer = ModelTimes()
            times = platform_steps(cfg, batches, timer)
            rounds_platform.append(times)
            rounds_in_place.append(statistics.median(quiet([t - m for t, m in zip(times, timer.model, strict=True)], warmup)))
            rounds_bare.append(bare_steps(cfg, batches))
    platform = min(rounds_platform, key=lambda t: statistics.median(quiet(t, warmup)))
    bare = min(rounds_bare, key=lambda t: statistics.median(t[warmup:]))
    row = {
        "platform_ms": 1e3 * statistics.median(quiet(platform, warmup)),
        "platform_mean_ms": 1e3 * statistics.mean(quiet(platform, warmup)),
        "platform_logging_ms": 1e3 * statistics.mean(logging(platform, warmup)),
        "bare_ms": 1e3 * statistics.median(bare[warmup:]),
    }
    row["overhead_ms"] = row["platform_ms"] - row["bare_ms"]
    row["in_place_ms"] = 1e3 * min(rounds_in_place)
    row["mean_overhead_ms"] = row["platform_mean_ms"] - 1e3 * statistics.mean(bare[warmup:])
    row["logging_overhead_ms"] = row["platform_logging_ms"] - row["bare_ms"]
    return row


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--objectives", default=",".join(OBJECTIVES.names()))
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--extra", nargs="*", default=[], help="config overrides (e.g. callbacks.online_probe=null)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (see the module docstring)")
    args = p.parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _table(args)
    finally:
        torch.set_num_threads(threads)


def _table(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    head = f"{'objective':<22}{'bare step':>11}{'platform':>11}{'overhead':>11}{'in place':>11}{'mean overhead':>15}{'logging step overhead':>24}"
    print(head + "\n" + "-" * len(head))
    for name in [n for n in args.objectives.split(",") if n]:
        r = {"objective": name, **measure(name, args.batch_size, args.steps, args.rounds, args.warmup, tuple(args.extra))}
        rows.append(r)
        print(
            f"{name:<22}{r['bare_ms']:>8.2f} ms{r['platform_ms']:>8.2f} ms{r['overhead_ms']:>8.2f} ms{r['in_place_ms']:>8.2f} ms"
            f"{r['mean_overhead_ms']:>12.2f} ms"
            f"{r['logging_overhead_ms']:>21.2f} ms",
            flush=True,
        )
    return rows


if __name__ == "__main__":
    main()
