"""Encoders shared by every objective: one adapter over timm, a position-keeping ConvNet, heads (projector,
action-conditioned predictor)."""

from jepa_platform.encoders.action_predictor import ActionConditionedPredictor
from jepa_platform.encoders.convnet import ConvEncoder
from jepa_platform.encoders.heads import projector
from jepa_platform.encoders.timm_encoder import TimmEncoder

__all__ = ["ActionConditionedPredictor", "ConvEncoder", "TimmEncoder", "projector"]
