"""Lightning callbacks shared by every objective."""

from jepa_platform.callbacks.checkpoint import ModelCheckpoint
from jepa_platform.callbacks.data import DataHealth
from jepa_platform.callbacks.guards import CollapseMonitor, NonFiniteGuard, TrainingDiverged
from jepa_platform.callbacks.progress import EpochSummary, batch_samples
from jepa_platform.callbacks.rng import RNGStates

__all__ = ["CollapseMonitor", "DataHealth", "EpochSummary", "ModelCheckpoint", "NonFiniteGuard", "RNGStates", "TrainingDiverged", "batch_samples"]
