"""Lightning callbacks shared by every objective."""

from jepa_platform.callbacks.data import DataHealth
from jepa_platform.callbacks.progress import EpochSummary, batch_samples

__all__ = ["DataHealth", "EpochSummary", "batch_samples"]
