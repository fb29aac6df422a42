"""Lightning callbacks shared by every objective."""

from jepa_platform.callbacks.data import DataHealth
from jepa_platform.callbacks.progress import EpochSummary, views_batch_size

__all__ = ["DataHealth", "EpochSummary", "views_batch_size"]
