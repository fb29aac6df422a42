"""Do the recipes learn? Each `experiment=<objective>_shapes` must beat the same encoder randomly initialised on the
built-in dataset by its stated margin of frozen linear-probe accuracy, the control (`invariance_only_shapes`) must
not, and `make demo` (the VICReg recipe) must gain 15 points on average over seeds 0, 1 and 2
(docs/objectives.md, "Recipes"). Slow: each run is 5-9 minutes on 2 cores.
"""

from __future__ import annotations

import pytest

from jepa_platform.train import run_train

pytestmark = pytest.mark.slow

GAIN = "eval/gain/linear_probe_acc"

#: frozen linear-probe gain over random init that every recipe must reach (seed 0): the issue's +10 points
MARGIN = 0.10
#: recipes that do not reach it yet, with what they measured (docs/objectives.md): strict xfail, so that a recipe
#: that starts to pass fails here until it is moved out of this list
MISSING = {
    "ema_jepa_shapes": "measured -1.9 points (0.1050 against 0.1244): the masked JEPA does not learn the classes in 10 CPU minutes",
    "h_jepa_shapes": "measured -6.6 points (0.1522 against 0.2182): the masked JEPA does not learn the classes in 12 CPU minutes",
}
RECIPES = [
    pytest.param(name, marks=pytest.mark.xfail(reason=MISSING[name], strict=True) if name in MISSING else ())
    for name in ("simclr_shapes", "barlow_shapes", "vicreg_shapes", "lejepa_shapes", "ema_jepa_shapes", "h_jepa_shapes")
]
#: the control must stay within the probe's noise of random init: two points (the trained encoder's BatchNorm
#: statistics have seen the data, the random one's have not, which alone moves the probe by about one point)
CONTROL_NOISE = 0.02


def _gain(make_cfg, experiment: str, seed: int = 0) -> float:
    cfg = make_cfg(f"experiment={experiment}", "logger=none", f"seed={seed}", run_name=f"{experiment}-{seed}", debug=False)
    metrics = run_train(cfg)
    print(f"{experiment} seed {seed}: {metrics['eval/linear_probe_acc']:.4f} vs random init {metrics['eval/random_init/linear_probe_acc']:.4f}")
    return metrics[GAIN]


@pytest.mark.parametrize("experiment", RECIPES)
def test_recipe_beats_random_init(experiment: str, make_cfg):
    gain = _gain(make_cfg, experiment)
    assert gain >= MARGIN, f"{experiment}: {100 * gain:+.1f} points over random init, below {100 * MARGIN:+.0f}"


def test_control_does_not_beat_random_init(make_cfg):
    gain = _gain(make_cfg, "invariance_only_shapes")
    assert gain <= CONTROL_NOISE, f"invariance_only_shapes must not learn, but gains {100 * gain:+.1f} points"


@pytest.mark.timeout(1800)  # three full demos: about 11 minutes on 2 cores, over the suite's 10-minute limit
def test_demo_gains_15_points_over_seeds(make_cfg):
    gains = [_gain(make_cfg, "demo", seed) for seed in (0, 1, 2)]
    assert sum(gains) / len(gains) >= 0.15, f"make demo gains {[round(100 * g, 1) for g in gains]} points for seeds 0, 1, 2"
