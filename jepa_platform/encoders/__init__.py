"""Encoders shared by every objective: one adapter over timm, plus heads (projector)."""

from jepa_platform.encoders.heads import projector
from jepa_platform.encoders.timm_encoder import TimmEncoder

__all__ = ["TimmEncoder", "projector"]
