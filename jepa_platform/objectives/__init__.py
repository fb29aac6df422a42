"""Self-supervised objectives as LightningModules; importing this package registers the built-ins."""

from jepa_platform.objectives.barlow import BarlowTwins
from jepa_platform.objectives.base import JointEmbeddingObjective, SelfSupervisedObjective, StepOutput
from jepa_platform.objectives.ema_jepa import EMAJEPA
from jepa_platform.objectives.h_jepa import HJEPA
from jepa_platform.objectives.invariance_only import InvarianceOnly
from jepa_platform.objectives.lejepa import LeJEPA
from jepa_platform.objectives.simclr import SimCLR
from jepa_platform.objectives.vicreg import VICReg

__all__ = [
    "EMAJEPA",
    "HJEPA",
    "BarlowTwins",
    "InvarianceOnly",
    "JointEmbeddingObjective",
    "LeJEPA",
    "SelfSupervisedObjective",
    "SimCLR",
    "StepOutput",
    "VICReg",
]
