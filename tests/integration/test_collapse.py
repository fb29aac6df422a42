"""The collapse experiment (docs/objectives.md): invariance alone collapses; VICReg, Barlow Twins and SIGReg do not.

Runs `jepa train experiment=collapse objective=<name>` on the built-in dataset: the same encoder, projector (without
BatchNorm, except for Barlow Twins), optimiser, steps and seed for the four objectives.
"""

from __future__ import annotations

import pytest

from jepa_platform.train import run_train

pytestmark = pytest.mark.slow


# VICReg's covariance term grows with D relative to the others and the paper's weights are balanced for D = 8192:
# at D = 32 the same balance is cov_weight = 8192 / 32 = 256. Barlow Twins' redundancy term likewise: lambda 0.34
# keeps the lambda * (D - 1) of the common D = 2048 recipes, and it needs the BatchNorm of its paper's projector
# (without it emb/rank stays at 5.7 of 32 at this budget). Both are documented in docs/objectives.md.
CASES = [
    pytest.param("invariance_only", [], id="invariance_only"),
    pytest.param("vicreg", ["objective.cov_weight=256"], id="vicreg"),
    pytest.param("barlow", ["objective.lambda_offdiag=0.34", "objective.projector_norm=batch"], id="barlow"),
    pytest.param("lejepa", [], id="lejepa"),
]


@pytest.mark.parametrize(("name", "overrides"), CASES)
def test_collapse_experiment(name: str, overrides: list[str], make_cfg):
    cfg = make_cfg("experiment=collapse", f"objective={name}", *overrides, "logger=none", run_name=name, debug=False)
    dim = cfg.objective.projector_dims[-1]
    metrics = run_train(cfg)
    rank = metrics["emb/rank"]
    print(f"{name}: emb/rank={rank:.2f} of {dim}, emb/std_mean={metrics['emb/std_mean']:.3g}, val/probe_acc={metrics['val/probe_acc']:.3f}")
    if name == "invariance_only":
        assert rank <= 2.0, f"invariance_only should collapse, but emb/rank={rank:.2f}"
    else:
        assert rank >= 0.25 * dim, f"{name} should keep emb/rank >= {0.25 * dim:.0f}, got {rank:.2f}"
