"""``jepa`` in the test process, with environment variables set for one call."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
from collections.abc import Iterator


@contextlib.contextmanager
def environment(env: dict[str, str] | None) -> Iterator[None]:
    """Set the variables of ``env`` for the duration of the block, then restore them as they were."""
    saved = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run_jepa(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``jepa <args>`` in this process, as the command line would run it, without an interpreter's start-up (seconds
    of imports per call in a test suite): environment variables from ``env`` for the call, the exit status, and what
    it printed. Commands that must be a process of their own (signals, multi-process launches) need a subprocess."""
    from hydra.core.global_hydra import GlobalHydra

    from jepa_platform import cli
    from jepa_platform.launch import run_stamp

    out, err = io.StringIO(), io.StringIO()
    try:
        GlobalHydra.instance().clear()
        run_stamp.cache_clear()
        with environment(env), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = cli.main(list(args))
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
    finally:
        GlobalHydra.instance().clear()
        run_stamp.cache_clear()
    return subprocess.CompletedProcess(["jepa", *args], code, out.getvalue(), err.getvalue())
