"""Planners behind one interface (:class:`~jepa_platform.world_model.planners.base.Planner`); importing this package
registers the built-ins: ``cem``, ``icem``, ``mppi``, ``gradient`` and the baselines ``random`` and ``greedy``."""

from jepa_platform.world_model.planners.base import Planner, WorldModel
from jepa_platform.world_model.planners.baselines import GreedyPlanner, RandomPlanner
from jepa_platform.world_model.planners.gradient import GradientPlanner
from jepa_platform.world_model.planners.sampling import CEM, ICEM, MPPI, colored_noise

__all__ = ["CEM", "ICEM", "MPPI", "GradientPlanner", "GreedyPlanner", "Planner", "RandomPlanner", "WorldModel", "colored_noise"]
