"""Fault injection: kill -9 a real ``jepa train`` at random moments, resume it, and compare with a run never killed.

Each trial starts ``jepa train`` in a fresh runs directory, sends SIGKILL after a random delay (a third of the
trials wait for a checkpoint file to start appearing and kill while it is being written), resumes with
``ckpt_path=last`` until the run finishes (killing again is allowed: ``--kills`` per trial), and then checks:

* the final checkpoint's weights equal the reference run's, tensor for tensor (bitwise: CPU, deterministic);
* the MLflow run has exactly one value per step for every metric, and the values equal the reference's;
* the run ends ``FINISHED``, with a ``resume.<n>.*`` tag per resume.

It prints one line per trial and ``matched M/N``. ``python -m benchmarks.faults --trials 10`` (default);
``tests/integration/test_faults.py`` runs a short version.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

#: a short run with mid-epoch checkpoints: epochs of 16 steps (``--epochs``), a checkpoint every 4 steps
OVERRIDES = (
    "debug=fast",
    "trainer.enable_progress_bar=false",
    "callbacks.model_checkpoint.every_n_train_steps=4",
    "callbacks.model_checkpoint.every_n_epochs=0",
)


@dataclass
class Outcome:
    matched: bool
    kills: int
    detail: str


def _env(runs: Path, data_dir: Path) -> dict[str, str]:
    env = dict(os.environ, JEPA_RUNS_DIR=str(runs), JEPA_DATA_DIR=str(data_dir), JEPA_RUN_ID="fault", PYTHONUNBUFFERED="1")
    return env


EPOCHS = [3]


def _command(*extra: str) -> list[str]:
    return [sys.executable, "-m", "jepa_platform.cli", "train", *OVERRIDES, f"trainer.max_epochs={EPOCHS[0]}", *extra]


def _run_dir(runs: Path) -> Path:
    return runs / "fault_vicreg"


def run_reference(workdir: Path, data_dir: Path) -> tuple[Path, float]:
    """The uninterrupted run, and how long it took (kills are drawn within that time)."""
    runs = workdir / "reference"
    start = time.monotonic()
    subprocess.run(_command(), env=_env(runs, data_dir), check=True, capture_output=True)
    return runs, time.monotonic() - start


def _checkpoint_being_written(run_dir: Path) -> bool:
    ckpts = run_dir / "checkpoints"
    try:
        return ckpts.is_dir() and any(p.name.endswith(".partial") for p in ckpts.iterdir())
    except FileNotFoundError:  # renamed while listing
        return False


def _kill_at_random(cmd: list[str], env: dict[str, str], run_dir: Path, rng: random.Random, during_write: bool, max_delay: float) -> str:
    """Start ``cmd``; SIGKILL it after a random delay, or while a checkpoint file is being written. Returns
    ``"write"`` (killed during a checkpoint write), ``"random"`` (killed at the delay) or ``""`` (it finished first)."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + rng.uniform(0.25 * max_delay, max_delay)
    how = ""
    while proc.poll() is None:
        if during_write and _checkpoint_being_written(run_dir):
            how = "write"
            break
        if not during_write and time.monotonic() >= deadline:
            how = "random"
            break
        time.sleep(0.001 if during_write else 0.05)
    if proc.poll() is not None:
        return ""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return how


def trial(workdir: Path, data_dir: Path, reference: Path, seed: int, kills: int, max_delay: float) -> Outcome:
    rng = random.Random(seed)
    runs = workdir / f"trial{seed}"
    env, run_dir = _env(runs, data_dir), _run_dir(runs)
    done, n_kills, kinds = 0, 0, []
    for attempt in range(kills + 1):
        resume = ("ckpt_path=last",) if (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").glob("*.ckpt")) else ()
        if attempt < kills:
            killed = _kill_at_random(_command(*resume), env, run_dir, rng, during_write=(seed + attempt) % 3 == 0, max_delay=max_delay)
            if killed:
                n_kills += 1
                kinds.append(killed)
                continue
            done = 1
            break
        result = subprocess.run(_command(*resume), env=env, capture_output=True, text=True)
        if result.returncode != 0:
            return Outcome(False, n_kills, f"resume failed: {(result.stderr.strip().splitlines() or ['?'])[-1]}")
        done = 1
    if not done:
        return Outcome(False, n_kills, "never finished")
    outcome = compare(runs, reference, n_kills)
    outcome.detail += f" (kills: {', '.join(kinds) or 'none'})"
    return outcome


def compare(runs: Path, reference: Path, kills: int) -> Outcome:
    from tests.support.runs import metric_history, same_training

    problem = same_training(_run_dir(runs), _run_dir(reference))
    if problem:
        return Outcome(False, kills, problem)
    _, hist, tags = metric_history(runs)
    resumes = int(tags.get("resume.count", "0"))
    return Outcome(True, kills, f"{len(hist)} metrics, one value per step, {resumes} resume(s) tagged")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.faults", description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--kills", type=int, default=2, help="kill -9 attempts per trial before the final resume")
    parser.add_argument("--max-delay", type=float, default=None, help="latest kill, seconds after a start (default: 0.9 x the reference run)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of the run (16 steps each)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=None, help="generated datasets (default: a temporary directory)")
    args = parser.parse_args(argv)
    EPOCHS[0] = args.epochs
    workdir = Path(tempfile.mkdtemp(prefix="jepa-faults-"))
    data_dir = Path(args.data_dir) if args.data_dir else workdir / "data"
    try:
        reference, seconds = run_reference(workdir, data_dir)
        max_delay = args.max_delay or 0.9 * seconds
        print(f"reference run: {seconds:.0f}s; kills between {0.25 * max_delay:.0f}s and {max_delay:.0f}s after each start", flush=True)
        matched = 0
        for i in range(args.trials):
            outcome = trial(workdir, data_dir, reference, args.seed + i, args.kills, max_delay)
            matched += outcome.matched
            print(f"trial {i + 1}: {'match' if outcome.matched else 'MISMATCH'} after {outcome.kills} kill(s): {outcome.detail}", flush=True)
        print(f"matched {matched}/{args.trials}")
        return 0 if matched == args.trials else 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
