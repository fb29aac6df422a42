"""Contracts for anything that runs during training, under two processes (gloo on 127.0.0.1), for plugin authors.

What breaks only with several processes: a torchmetrics list state is one tensor after a sync (``if self.samples``
then fails), work done on rank 0 alone leaves the other ranks waiting in their next collective, a collective that
only some ranks reach hangs, a decision taken per rank (stop, skip a step) splits the ranks. Two checks:

* :func:`check_metric_under_two_processes`: a torchmetrics ``Metric`` updated on each rank's share of the batches
  computes, after its sync, what one process computes on all of them, twice in a row, after a reset, and with a
  rank that saw nothing.
* :func:`check_callback_under_two_processes`: ``jepa train`` on two CPU processes (``trainer=ddp`` or ``trainer=fsdp``)
  with the default callbacks plus yours (``+callbacks.under_test``), then a resume from its checkpoint: both must
  exit 0 within a time limit (a hang is reported as one). It goes through the command line users run.

:func:`jepa_two_processes` runs any ``jepa train`` command on two CPU processes the same way (the platform's own
tests use it for every objective).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

#: what makes ``jepa train`` a two-process CPU run (Lightning's launcher starts rank 1; gloo on loopback)
TWO_CPU_PROCESSES = ("trainer.accelerator=cpu", "trainer.devices=2", "trainer.enable_progress_bar=false")
HANG = 124


def jepa_two_processes(
    args: Sequence[str], env: dict[str, str] | None = None, timeout: float = 300, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    """``jepa <args>`` in a process group of its own, killed whole after ``timeout`` seconds (then exit status 124
    and a line saying that a rank probably waits in a collective another rank never reached)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", **(env or {})}
    cmd = [sys.executable, "-m", "jepa_platform.cli", *args]
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        err += f"\ntimed out after {timeout:g} s: a rank probably waits in a collective that another rank never reached"
        return subprocess.CompletedProcess(cmd, HANG, out, err)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def check_callback_under_two_processes(
    target: str,
    options: dict[str, Any] | None = None,
    strategy: str = "ddp",
    overrides: Sequence[str] = ("debug=fast", "trainer.limit_train_batches=4", "trainer.limit_val_batches=2"),
    workdir: Path | None = None,
    data_dir: Path | None = None,
    timeout: float = 300,
) -> Path:
    """Train with the callback ``target`` (a class path, with constructor ``options``) added to the defaults under
    ``trainer=<strategy>`` on two CPU processes, then resume the run from its checkpoint for a second epoch; raise
    ``AssertionError`` with the end of the log if either run fails or hangs. Returns the run directory."""
    workdir = Path(workdir or tempfile.mkdtemp(prefix="jepa-two-processes-"))
    env = {"JEPA_RUNS_DIR": str(workdir / "runs"), "JEPA_RUN_ID": "contract", "JEPA_DATA_DIR": str(data_dir or workdir / "data")}
    extra = [f"+callbacks.under_test._target_={target}", *(f"+callbacks.under_test.{k}={json.dumps(v)}" for k, v in (options or {}).items())]
    base = ["train", *overrides, f"trainer={strategy}", *TWO_CPU_PROCESSES, *extra]
    for attempt, more in (("training", ["trainer.max_epochs=1"]), ("resume", ["trainer.max_epochs=2", "ckpt_path=last"])):
        done = jepa_two_processes([*base, *more], env, timeout)
        if done.returncode != 0:
            raise AssertionError(f"{target} under trainer={strategy}, two processes: the {attempt} exited {done.returncode}:\n{done.stderr[-3000:]}")
    (run,) = [p for p in (workdir / "runs").iterdir() if (p / "checkpoints").is_dir()]
    return run


# -- metrics -------------------------------------------------------------------------------------------------------
def _values(out: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().double().cpu() for k, v in out.items()} if isinstance(out, dict) else {"value": out.detach().double().cpu()}


def _run_metric(rank: int, world_size: int, factory: Callable, batches: list) -> dict[str, Any]:
    metric = factory()
    for args in batches[rank::world_size]:
        metric.update(*args)
    results = {"first": _values(metric.compute())}
    results["second"] = _values(metric.compute())  # the states are back to this rank's own after a sync
    metric.reset()
    if rank != 0:  # rank 0 sees nothing since the reset: the other rank's samples alone make the value
        for args in batches:
            metric.update(*args)
    results["one_rank_empty"] = _values(metric.compute())
    return results


def _metric_worker(rank: int, world_size: int, port: int, cases: dict[str, tuple[Callable, list]], out_dir: str) -> None:
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    results: dict[str, Any] = {}
    try:
        for name, (factory, batches) in cases.items():
            try:
                results[name] = _run_metric(rank, world_size, factory, batches)
            except Exception as exc:  # reported to the caller, which raises with it; the next case would hang
                results[name] = {"error": f"{type(exc).__name__}: {exc}"}
                break
    finally:
        dist.destroy_process_group()
    torch.save(results, Path(out_dir, f"rank{rank}.pt"))


def metrics_under_two_processes(cases: dict[str, tuple[Callable, list[tuple]]], rtol: float = 1e-5, atol: float = 1e-6) -> dict[str, str]:
    """Several metrics checked in one pair of processes: ``{name: (factory, batches)}`` -> ``{name: problem}``, an
    empty string for a metric that passes (see :func:`check_metric_under_two_processes`)."""
    from jepa_platform.testing import free_port

    expected = {}
    for name, (factory, batches) in cases.items():
        reference = factory()
        for args in batches:
            reference.update(*args)
        expected[name] = _values(reference.compute())
    with tempfile.TemporaryDirectory() as out:
        mp.start_processes(_metric_worker, args=(2, free_port(), cases, out), nprocs=2, start_method="spawn")
        ranks = [torch.load(Path(out, f"rank{r}.pt"), weights_only=True) for r in range(2)]
    problems = dict.fromkeys(cases, "")
    for name in cases:
        for r, found in enumerate(ranks):
            problems[name] = problems[name] or _problem(r, found.get(name, {"error": "not run: an earlier case failed"}), expected[name], rtol, atol)
    return problems


def _problem(rank: int, found: dict[str, Any], expected: dict[str, torch.Tensor], rtol: float, atol: float) -> str:
    if "error" in found:
        return f"rank {rank} of 2: {found['error']}"
    for case in ("first", "second", "one_rank_empty"):
        if set(found[case]) != set(expected):
            return f"rank {rank}, {case}: keys {sorted(found[case])} differ from one process's {sorted(expected)}"
        for key, value in expected.items():
            if not torch.allclose(found[case][key], value, rtol=rtol, atol=atol, equal_nan=True):
                return f"rank {rank}, {case}: {key}={found[case][key].tolist()} but one process computes {value.tolist()}"
    return ""


def check_metric_under_two_processes(factory: Callable, batches: list[tuple], rtol: float = 1e-5, atol: float = 1e-6) -> None:
    """Check a torchmetrics metric under two gloo processes against one process (module docstring).

    ``factory`` builds the metric (a class or a ``functools.partial`` of one: it must be picklable); ``batches`` are
    ``update`` argument tuples (rank ``r`` takes ``batches[r::2]``). Raises ``AssertionError`` naming the rank and the
    case (``first`` compute, ``second`` compute, ``one_rank_empty`` after a reset) that failed or differed."""
    problem = metrics_under_two_processes({"metric": (factory, batches)}, rtol, atol)["metric"]
    if problem:
        raise AssertionError(problem)
