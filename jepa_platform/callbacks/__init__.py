"""Lightning callbacks shared by every objective: checkpoints, guards, progress, and evaluation (probe, kNN,
statistics) that objectives opt into by exposing features, and the figures, model and system metrics a run leaves in
MLflow."""

from jepa_platform.callbacks.artifacts import EmbeddingPlots, EncoderModel, SystemMonitor
from jepa_platform.callbacks.checkpoint import ModelCheckpoint
from jepa_platform.callbacks.data import DataHealth
from jepa_platform.callbacks.evaluation import EmbeddingMonitor, KNNMonitor, OnlineProbe
from jepa_platform.callbacks.garbage import GarbageCollection
from jepa_platform.callbacks.guards import CollapseMonitor, NonFiniteGuard, TrainingDiverged
from jepa_platform.callbacks.learning_rates import LearningRates
from jepa_platform.callbacks.preemption import Preempted, Preemption
from jepa_platform.callbacks.progress import EpochSummary, ProgressBar, batch_samples
from jepa_platform.callbacks.rng import RNGStates

__all__ = [
    "CollapseMonitor",
    "DataHealth",
    "EmbeddingMonitor",
    "EmbeddingPlots",
    "EncoderModel",
    "EpochSummary",
    "GarbageCollection",
    "KNNMonitor",
    "LearningRates",
    "ModelCheckpoint",
    "NonFiniteGuard",
    "OnlineProbe",
    "Preempted",
    "Preemption",
    "ProgressBar",
    "RNGStates",
    "SystemMonitor",
    "TrainingDiverged",
    "batch_samples",
]
