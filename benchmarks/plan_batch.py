"""``jepa plan`` one episode at a time against all episodes as one batch, side by side in one run: wall time of the
whole table and each planner's success, steps and violations, which must agree (same seeds, same pairs).

Needs a trained world model (``jepa train experiment=two_rooms``, about 7 minutes on a 2-core CPU): not in
``make bench``. Each setting runs ``jepa plan`` in its own process, pictures off, MLflow off.

    python -m benchmarks.plan_batch RUN_DIR [--episodes 50] [--extra "--planners cem"]
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path


def run_plan(run_dir: Path, episodes: int, batch: int | None, extra: list[str]) -> tuple[float, dict]:
    """Wall seconds of one ``jepa plan`` process and its ``plan.json``."""
    args = [sys.executable, "-m", "jepa_platform.cli", "plan", str(run_dir), "--episodes", str(episodes), "--no-mlflow", "--pictures", "0", *extra]
    if batch is not None:
        args += ["--batch", str(batch)]
    before = set((run_dir / "plan").glob("*")) if (run_dir / "plan").is_dir() else set()
    tic = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - tic
    if done.returncode:
        raise SystemExit(done.stderr[-2000:])
    print(done.stdout.split("results and pictures")[0])
    time.sleep(1.1)  # plan directories are named by the second
    (out,) = set((run_dir / "plan").glob("*")) - before
    return seconds, json.loads((out / "plan.json").read_text())


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a world model's run directory")
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--extra", default="", help="more jepa plan arguments, one string")
    args = parser.parse_args(argv)
    extra = shlex.split(args.extra)
    print(f"== one episode at a time (--batch 1), {args.episodes} episodes ==")
    one_s, one = run_plan(args.run, args.episodes, 1, extra)
    print(f"== all {args.episodes} episodes as one batch ==")
    all_s, batched = run_plan(args.run, args.episodes, None, extra)
    print(f"{'planner':<12}{'success 1 / batch':>20}{'mean steps 1 / batch':>24}{'violations 1 / batch':>24}{'same episodes':>15}")
    for name, r in one["results"].items():
        a, b = r["all"], batched["results"][name]["all"]
        pairs = zip(one["episodes"][name], batched["episodes"][name], strict=True)
        same = sum(x["success"] == y["success"] and x["steps"] == y["steps"] for x, y in pairs)
        print(
            f"{name:<12}{100 * a['success_rate']:>9.1f}% /{100 * b['success_rate']:>6.1f}%{a['mean_steps']:>12.1f} /{b['mean_steps']:>8.1f}"
            f"{int(a['violations']):>14d} /{int(b['violations']):>6d}{same:>10d}/{len(one['episodes'][name])}"
        )
    print(f"jepa plan wall time: {one_s:.1f} s one at a time, {all_s:.1f} s batched: {one_s / all_s:.2f}x faster")
    return {"one_at_a_time_s": one_s, "batched_s": all_s, "speedup": one_s / all_s}


if __name__ == "__main__":
    main()
