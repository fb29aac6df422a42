"""Pure loss terms (`functional`) shared by every objective."""

from jepa_platform.losses.functional import LossOutput, covariance, invariance, variance, vicreg

__all__ = ["LossOutput", "covariance", "invariance", "variance", "vicreg"]
