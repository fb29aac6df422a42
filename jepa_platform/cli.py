"""The ``jepa`` command: ``jepa train ...`` (Hydra app over conf/), ``jepa eval ...`` and ``jepa list``.

User errors (bad config, data, checkpoint or path) print one line starting with ``error:`` and exit with 2.
"""

from __future__ import annotations

import sys

from jepa_platform import __version__
from jepa_platform.errors import JepaError

USAGE = """usage: jepa <command> [args]

commands:
  train   train an objective: jepa train objective=vicreg encoder=resnet18 data=shapes trainer.max_epochs=2
          (jepa train --help lists config groups and options; --cfg job prints the composed config)
  eval    linear-probe and kNN accuracy of a run's encoder, and of the same encoder randomly initialised:
          jepa eval runs/<run> [--random-init] (jepa eval --help for options)
  list    registered objectives and encoders, plugins included, with one-line descriptions
"""


def _train(args: list[str]) -> int:
    from jepa_platform import train
    from jepa_platform.config import rewrite_trainer_overrides, validate

    args = rewrite_trainer_overrides(args)
    validate(args)
    return train.main(args)


def _eval(args: list[str]) -> int:
    from jepa_platform.eval.cli import main

    return main(args)


def _list(args: list[str]) -> int:
    from jepa_platform.listing import main

    return main(args)


COMMANDS = {"train": _train, "eval": _eval, "list": _list}


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
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
