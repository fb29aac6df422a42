"""The signals that stop a run, and how ``jepa train`` reacts to them.

Schedulers stop jobs with signals: SIGTERM (SLURM pre-emption and ``scancel``, Kubernetes, torchrun passing on its
own), SIGUSR1 (SLURM's warning before the time limit, when the job asks for it: ``#SBATCH --signal=USR1@120``),
SIGINT (Ctrl-C) and SIGHUP (a closed terminal). Two modes:

* **deferred**, while the training loop runs: the handler only records the signal. The pre-emption callback
  (:class:`jepa_platform.callbacks.Preemption`) reads the record at the next step boundary on every rank, saves a
  complete checkpoint and ends the run; nothing is interrupted mid-step (a half-done collective or optimiser step).
  A second signal while one is pending ends the process at once.
* **immediate**, before and after the training loop (set-up, data generation, the final evaluation): the handler
  raises ``SystemExit(128 + signal)``, which Lightning turns into a ``KILLED`` MLflow run.

DataLoader workers ignore these signals (:func:`ignore_in_worker`): a scheduler signals every process of a job, and
a worker killed by SIGTERM would turn a clean stop into "DataLoader worker ... killed by signal" tracebacks. The main
process shuts its workers down itself; a worker whose parent dies still exits (PyTorch watches the parent).
"""

from __future__ import annotations

import signal
from typing import Any

#: the signals that stop a run (SIGUSR1: SLURM's time-limit warning)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT, signal.SIGHUP)

_received: list[int] = []
_deferred = [False]


def _handler(signum: int, frame: Any) -> None:
    pending = bool(_received)
    _received.append(signum)
    if _deferred[0] and not pending:
        return  # read at the next step boundary
    raise SystemExit(128 + signum)


def install() -> None:
    """Make :data:`STOP_SIGNALS` stop the run as the module docstring says (main thread only; elsewhere a no-op).
    Lightning installs its own SIGTERM handler when ``fit`` starts: the pre-emption callback installs this one again
    when training starts."""
    for sig in STOP_SIGNALS:
        try:
            signal.signal(sig, _handler)
        except ValueError:  # not the main thread
            return


def defer(on: bool) -> None:
    """Record signals for the step boundary (``True``, inside the training loop) or stop at once (``False``)."""
    _deferred[0] = on


def received() -> int:
    """The first stop signal this process received (0: none)."""
    return _received[0] if _received else 0


def record(signum: int) -> None:
    """Count ``signum`` as received by this process (another rank received it: this one stops for the same reason)."""
    if not _received:
        _received.append(signum)


def clear() -> None:
    """Forget received signals (a new run in the same process: tests, notebooks)."""
    _received.clear()
    _deferred[0] = False


def name(signum: int) -> str:
    return signal.Signals(signum).name if signum in signal.Signals.__members__.values() else f"signal {signum}"


def ignore_in_worker() -> None:
    """In a DataLoader worker: leave the stop signals to the main process (module docstring)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
