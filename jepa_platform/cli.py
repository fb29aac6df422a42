"""The ``jepa`` command: ``jepa train ...`` (Hydra app over conf/), ``jepa eval``, ``jepa export``, ``jepa list``, ``jepa data``,
``jepa plan``, ``jepa predict``, ``jepa compare``, ``jepa sync``, ``jepa surprise``.

User errors (bad config, data, checkpoint or path) print one line starting with ``error:`` and exit with 2.
"""

from __future__ import annotations

import sys

from jepa_platform import __version__
from jepa_platform.errors import JepaError, one_line

USAGE = """usage: jepa <command> [args]

commands:
  train   train an objective: jepa train objective=vicreg encoder=resnet18 data=shapes trainer.max_epochs=2
          (jepa train --help lists config groups and options; --cfg job prints the composed config)
  eval    linear-probe and kNN accuracy of a run's encoder, and of the same encoder randomly initialised:
          jepa eval runs/<run> [--random-init compare|only|skip] (jepa eval --help for options)
  export  the trained encoder of a run (single-file or sharded checkpoint) as one file for downstream use:
          jepa export runs/<run> [--out encoder.pt] (loads with torch.load(..., weights_only=True))
  list    registered objectives, encoders, planners and environments, plugins included, with one-line descriptions
  data    shards: jepa data convert SRC OUT_DIR (image folder, .npz, IDX) | jepa data inspect DIR_OR_URLS
          | jepa data collect ENV OUT_DIR (trajectories of two_rooms, maze or any gymnasium env)
  compare objectives side by side from MLflow (mean ± std over seeds, curves): jepa compare --sweep <parent run id>
          | --experiment NAME | RUN_ID... [--format markdown|csv|json] [--tracking-uri URI]
  sync    upload what runs could not send to a tracking server that was away: jepa sync runs/<run>
  plan    evaluate a world model's planners (CEM, iCEM, MPPI, gradient) against baselines on held-out goals:
          jepa plan runs/<run> [--episodes 50] [--hierarchical] (jepa plan --help for options)
  predict open-loop prediction error of world models, with and without their latent variable, on held-out episodes:
          jepa predict runs/<run> [runs/<run>...]
  surprise  pairwise accuracy on impossible events (vanishing, teleporting, passing through walls...) of models that
          predict future frames, next to the same model untrained: jepa surprise runs/<run> [runs/<baseline>...]
"""


def _train(args: list[str]) -> int:
    # The config is composed once and checked before the training stack (torch, Lightning, MLflow) is imported, so
    # that help, --cfg and config errors answer at once. A multirun's launcher composes each job (on other machines,
    # for SLURM), after every combination has been checked here.
    from jepa_platform.config import is_multirun, prints_only, rewrite_trainer_overrides, run_app, run_once, validate
    from jepa_platform.launch import rank_overrides

    args = rewrite_trainer_overrides(args)
    if prints_only(args) or is_multirun(args):
        validate(args)
        run_app(args, task=lambda cfg: None if prints_only(args) else _train_task(args)(cfg))
        return 0
    args = [*args, *rank_overrides(args)]
    run_once(args, task=lambda cfg: _train_task(args)(cfg), place=_place)
    return 0


def _train_task(args: list[str]):  # imported once the config is known to be good
    from jepa_platform import train

    return train.task(args)


def _place(cfg, overrides: list[str]) -> None:
    from jepa_platform.train import place_resumed_run

    place_resumed_run(cfg, overrides)


def _eval(args: list[str]) -> int:
    from jepa_platform.eval.cli import main

    return main(args)


def _export(args: list[str]) -> int:
    from jepa_platform.export import main

    return main(args)


def _list(args: list[str]) -> int:
    from jepa_platform.listing import main

    return main(args)


def _compare(args: list[str]) -> int:
    from jepa_platform.tracking.compare import main

    return main(args)


def _sync(args: list[str]) -> int:
    from jepa_platform.tracking.outbox import main

    return main(args)


def _plan(args: list[str]) -> int:
    from jepa_platform.world_model.evaluate import main

    return main(args)


def _predict(args: list[str]) -> int:
    from jepa_platform.world_model.prediction import main

    return main(args)


def _surprise(args: list[str]) -> int:
    from jepa_platform.surprise.cli import main

    return main(args)


def _data(args: list[str]) -> int:
    import argparse

    from data_modules import collect, convert, inspection

    parser = argparse.ArgumentParser(prog="jepa data", description="Write and inspect WebDataset shards.")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, module, text in (
        ("convert", convert, "write shards from an image folder, .npz or IDX files"),
        ("inspect", inspection, "counts, fields, classes and a PNG grid"),
        ("collect", collect, "exploratory trajectories of an environment (frames, actions, states)"),
    ):
        sub = commands.add_parser(name, help=text, description=module.__doc__.splitlines()[0])
        module.add_arguments(sub)
        sub.set_defaults(func=module.run)
    parsed = parser.parse_args(args)
    return parsed.func(parsed)


COMMANDS = {
    "train": _train,
    "eval": _eval,
    "export": _export,
    "list": _list,
    "data": _data,
    "plan": _plan,
    "predict": _predict,
    "compare": _compare,
    "sync": _sync,
    "surprise": _surprise,
}


def run(*args: str, runs_dir: str | None = None, data_dir: str | None = None) -> str:
    """``jepa <args>`` in a child process (notebooks, scripts): what it printed, or a ``RuntimeError`` with the end of
    its error output; ``runs_dir`` and ``data_dir`` set ``JEPA_RUNS_DIR`` and ``JEPA_DATA_DIR`` for it."""
    import os
    import subprocess

    env = dict(os.environ)
    env.update({k: v for k, v in (("JEPA_RUNS_DIR", runs_dir), ("JEPA_DATA_DIR", data_dir)) if v})
    done = subprocess.run([sys.executable, "-m", "jepa_platform.cli", *args], env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(done.stderr[-2000:])
    return done.stdout


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    if argv[0] == "--version":
        print(f"jepa-platform {__version__}")
        return 0
    command = COMMANDS.get(argv[0])
    if command is None:
        print(f"error: unknown command '{argv[0]}': use one of {', '.join(COMMANDS)} (jepa --help)", file=sys.stderr)
        return 2
    try:
        return command(argv[1:])
    except JepaError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
