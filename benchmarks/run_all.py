"""``make bench``: the CPU benchmarks in one run (about 8 minutes on 2 cores), then one summary table of ratios.

Not run here (minutes each, or a question of their own): scaleout.py (DDP vs FSDP2 memory per rank),
data_throughput.py (224 px ImageNet-style decoding per worker count), data_vs_compute.py, faults.py (kill -9 and
resume). Run them with ``python -m benchmarks.<name>``.
"""

from __future__ import annotations

import os
import platform
import time
from datetime import date

import torch

from benchmarks import framework_overhead, hierarchical_planning, levers, peer_lightly, planning, step_overhead


def main() -> None:
    started = time.perf_counter()
    print(f"{date.today()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, no GPU used\n")
    print("== step_overhead: platform (Lightning, callbacks, MLflow) vs a bare loop, same batches ==")
    overhead = step_overhead.main([])
    print("\n== framework_overhead: every objective, a model whose step costs a few ms, ms per step the platform adds ==")
    tiny = framework_overhead.main(["--rounds", "2"])
    print("\n== peer_lightly: SimCLR ResNet-18 vs a hand-written lightly loop ==")
    peer = peer_lightly.main([])
    print("\n== levers ==")
    lever_rows = levers.main([])
    print("\n== planning (one replan of 1 and of 50 episodes per planner) ==")
    plans = planning.main([])
    print("\n== hierarchical_planning (compute per executed step, flat vs hierarchical) ==")
    hierarchical = hierarchical_planning.main([])

    print("\n== summary ==")
    print(f"{'measurement':<70}{'ratio':>8}  target")
    for row in overhead:
        print(f"{'platform / bare step time, ' + row['objective']:<70}{row['ratio']:>8.3f}  <= 1.05")
    for row in tiny:
        print(f"{'platform - bare, ms per step that does not log (tiny model), ' + row['objective']:<70}{row['overhead_ms']:>8.2f}  <= 1 ms")
    print(f"{'platform / lightly samples/s, end to end (augment_on=' + peer['best_augment_on'] + ')':<70}{peer['end_to_end_ratio']:>8.2f}  >= 2")
    print(f"{'platform / lightly samples/s, model step only':<70}{peer['step_ratio']:>8.2f}")
    print(f"{'platform end to end / platform model step only':<70}{peer['end_to_end_over_step']:>8.2f}  >= 0.75")
    print(f"{'platform / lightly peak memory (PSS, end to end)':<70}{peer['memory_ratio']:>8.2f}  <= 1.0")
    for name, before, after in lever_rows:
        print(f"{name:<70}{after / before:>8.2f}")
    for key, by_size in plans.items():
        speedup = (by_size[1]["seconds"]) / (by_size[50]["seconds"] / 50)
        print(f"{'per-episode replan speed-up, 50 episodes batched vs 1, ' + key:<70}{speedup:>8.1f}")
    print(f"{'hierarchical / flat CEM planning seconds per executed step (maze)':<70}{hierarchical['seconds']:>8.2f}  <= 1 (equal compute)")
    print(f"{'hierarchical / flat CEM world-model evaluations per executed step':<70}{hierarchical['evaluations']:>8.2f}")
    print(f"\nmake bench took {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
