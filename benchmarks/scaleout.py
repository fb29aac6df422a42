"""DDP against FSDP2 on the same model, world size and batches, side by side in one run: per-rank bytes of parameters,
gradients and optimiser state, and time per step.

Two gloo processes on this machine's CPU by default (the Lightning strategies of ``trainer=ddp`` and
``trainer=fsdp``, through :func:`jepa_platform.parity.strategy_losses`), training ``ema_jepa`` whose encoder is a
real timm ViT (``--encoder vit_base_patch16_224``: 86M parameters; 4px patches on 32px inputs). FSDP shards
parameters, gradients and optimiser state over the ranks, so its bytes per rank should be about 1/world of DDP's,
while the EMA target and the predictor are sharded the same way. The time ratio shows the cost of the extra
all-gathers and reduce-scatters over gloo; it is not a GPU/NCCL figure.

    python -m benchmarks.scaleout [--encoder vit_base_patch16_224] [--objective ema_jepa] [--batch 8] [--steps 4]
"""

from __future__ import annotations

import argparse
import statistics

from jepa_platform.parity import strategy_losses

MB = 2**20


def measure(objective: str, encoder: str, batch: int, steps: int, world_size: int) -> dict[str, dict]:
    case = {objective: [f"objective={objective}", f"encoder.name={encoder}"]}
    out = {}
    for strategy in ("ddp", "fsdp"):
        result = strategy_losses(case, strategy, world_size=world_size, per_rank=batch, steps=steps, epoch_steps=steps, dtype="float32")
        out[strategy] = result[objective]
    return out


def report(results: dict[str, dict], args: argparse.Namespace) -> None:
    ddp, fsdp = results["ddp"], results["fsdp"]
    print(f"{args.objective} with {args.encoder}, {args.world_size} gloo processes, {args.batch} samples per rank, float32, CPU")
    print(f"{'per rank':<22}{'ddp':>12}{'fsdp':>12}{'fsdp/ddp':>10}")
    for key in ("param_bytes", "grad_bytes", "optimizer_bytes"):
        print(f"{key.removesuffix('_bytes') + ' MiB':<22}{ddp[key] / MB:>12.1f}{fsdp[key] / MB:>12.1f}{fsdp[key] / ddp[key]:>10.3f}")
    total = {s: sum(r[k] for k in ("param_bytes", "grad_bytes", "optimizer_bytes")) for s, r in results.items()}
    print(f"{'total MiB':<22}{total['ddp'] / MB:>12.1f}{total['fsdp'] / MB:>12.1f}{total['fsdp'] / total['ddp']:>10.3f}")
    t = {s: statistics.median(r["step_seconds"]) for s, r in results.items()}
    print(f"{'median step s':<22}{t['ddp']:>12.3f}{t['fsdp']:>12.3f}{t['fsdp'] / t['ddp']:>10.3f}")
    same = all(abs(a - b) <= 1e-4 * max(abs(a), 1.0) for a, b in zip(ddp["losses"], fsdp["losses"], strict=True))
    print(f"losses agree (float32, rel 1e-4): {same}")


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--objective", default="ema_jepa")
    p.add_argument("--encoder", default="vit_base_patch16_224", help="a timm ViT name (the objective's encoder)")
    p.add_argument("--batch", type=int, default=8, help="samples per rank")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--world-size", type=int, default=2)
    args = p.parse_args(argv)
    report(measure(args.objective, args.encoder, args.batch, args.steps, args.world_size), args)


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
