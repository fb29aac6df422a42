"""Pure loss terms (`functional`) shared by every objective."""

from jepa_platform.losses.functional import (
    LossOutput,
    barlow_twins,
    covariance,
    info_nce,
    invariance,
    masked_prediction,
    multiview_invariance,
    normalised_targets,
    random_directions,
    sigreg,
    variance,
    vicreg,
)

__all__ = [
    "LossOutput",
    "barlow_twins",
    "covariance",
    "info_nce",
    "invariance",
    "masked_prediction",
    "multiview_invariance",
    "normalised_targets",
    "random_directions",
    "sigreg",
    "variance",
    "vicreg",
]
