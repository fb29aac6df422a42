"""Self-supervised objectives as LightningModules."""

from jepa_platform.objectives.base import JointEmbeddingObjective
from jepa_platform.objectives.vicreg import VICReg

__all__ = ["JointEmbeddingObjective", "VICReg"]
