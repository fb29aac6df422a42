"""Self-supervised objectives as LightningModules; importing this package registers the built-ins."""

from jepa_platform.objectives.barlow import BarlowTwins
from jepa_platform.objectives.base import JointEmbeddingObjective, StepOutput
from jepa_platform.objectives.invariance_only import InvarianceOnly
from jepa_platform.objectives.lejepa import LeJEPA
from jepa_platform.objectives.simclr import SimCLR
from jepa_platform.objectives.vicreg import VICReg

__all__ = ["BarlowTwins", "InvarianceOnly", "JointEmbeddingObjective", "LeJEPA", "SimCLR", "StepOutput", "VICReg"]
