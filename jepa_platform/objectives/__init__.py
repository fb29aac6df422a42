"""Objectives as LightningModules (self-supervised representation learners and world models); importing this
package registers the built-ins."""

from jepa_platform.objectives.ac_jepa import ACJEPA
from jepa_platform.objectives.barlow import BarlowTwins
from jepa_platform.objectives.base import JointEmbeddingObjective, Objective, SelfSupervisedObjective, StepOutput
from jepa_platform.objectives.ema_jepa import EMAJEPA
from jepa_platform.objectives.h_jepa import HJEPA
from jepa_platform.objectives.hierarchical_ac_jepa import HierarchicalACJEPA
from jepa_platform.objectives.invariance_only import InvarianceOnly
from jepa_platform.objectives.lejepa import LeJEPA
from jepa_platform.objectives.pixel_predictor import PixelPredictor
from jepa_platform.objectives.simclr import SimCLR
from jepa_platform.objectives.vicreg import VICReg

__all__ = [
    "ACJEPA",
    "EMAJEPA",
    "HJEPA",
    "BarlowTwins",
    "HierarchicalACJEPA",
    "InvarianceOnly",
    "JointEmbeddingObjective",
    "LeJEPA",
    "Objective",
    "PixelPredictor",
    "SelfSupervisedObjective",
    "SimCLR",
    "StepOutput",
    "VICReg",
]
