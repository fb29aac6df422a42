"""Hierarchical AC-JEPA: a world model with a second level that predicts ``stride`` steps ahead in a more abstract
embedding, from a latent macro-action, so that a planner can search a long horizon in few steps (HWM, hierarchical
planning with latent world models, 2026).

It is :class:`~jepa_platform.objectives.ACJEPA` with one :class:`~jepa_platform.world_model.level.UpperLevel` in
``levels_above`` (``conf/objective/hierarchical_ac_jepa.yaml``):

- **Level 1** is AC-JEPA's: frame embeddings ``z_t`` predicted one step ahead from the action (``train/*``, ``val/*``).
- **Level 2** reads the level-1 embeddings (detached by default: it trains on top of level 1 from the same clips
  without changing it, in the same run): ``s_t = embed(z_t)``, a smaller embedding; a **macro-action**
  ``m_t = A(a_t .. a_{t+k-1})`` encodes the ``k = stride`` actions between ``t`` and ``t + k``; its predictor
  predicts ``s_{t+k}`` from ``(s_t, m_t)`` (teacher-forced from every ``t``, and open loop over consecutive
  macro-steps). Its own regularisers: on ``s`` and on ``m`` (``m`` must spread over the box the high-level planner
  searches, ``[-macro_bound, macro_bound]``), temporal smoothness on ``s``; a state head on detached ``s`` (where
  subgoals are drawn); an optional latent variable as at level 1.
- **Why a latent macro-action and not a subgoal embedding as the high-level action** (both appear in HWM's
  discussion): the planner searches a bounded box of a few dimensions (``macro_dim``), where CEM, MPPI and gradient
  descent work, instead of a ``dim``-wide space where most points are no reachable state; and the level-2 predictor
  learns which macro-actions a wall stops, so a plan over macro-actions only proposes reachable subgoals, the
  predicted ``s`` after each macro-step. Those predicted embeddings are the subgoals handed to level 1.

Metrics: ``level2/loss/<term>``, ``level2/energy`` (teacher-forced error), ``level2/val/rollout_energy/h<h>`` (open
loop, h macro-steps ahead), ``level2/val/state_error``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from jepa_platform.errors import ConfigError
from jepa_platform.objectives.ac_jepa import ACJEPA
from jepa_platform.optim import OptimizerFactory
from jepa_platform.registry import register_objective


@register_objective("hierarchical_ac_jepa")
class HierarchicalACJEPA(ACJEPA):
    """Two-level action-conditioned world model (HWM): AC-JEPA plus a level that predicts ``stride`` steps ahead from
    latent macro-actions (see module docstring); ACJEPA's arguments, with one level in ``levels_above``."""

    def __init__(self, encoder: nn.Module, optimizer: OptimizerFactory, **kwargs: Any) -> None:
        if not kwargs.get("levels_above"):
            raise ConfigError("hierarchical_ac_jepa needs a level above level 1 in objective.levels_above (conf/objective/hierarchical_ac_jepa.yaml)")
        super().__init__(encoder, optimizer, **kwargs)
