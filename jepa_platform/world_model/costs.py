"""What a planner minimises: energy between predicted and goal embeddings, action magnitude, and guardrails.

- **Goal energy**: mean squared distance between a predicted embedding and the goal image's embedding, at the end
  of the plan (``terminal_weight``) and, optionally, at every step (``step_weight``, averaged over steps).
- **Action cost**: ``action_weight`` x mean squared action.
- **Guardrails**: hard constraints on *predicted* states. A :class:`Guardrail` reads a predicted embedding with the
  world model's state head (trained on the collected states only, never on the simulator during planning) and
  flags any step whose estimated position falls in a forbidden box inflated by ``margin``. Sampling planners
  discard flagged candidates; the gradient planner minimises a soft penalty and then rejects flagged sequences.
  A plan is never returned with a flagged step: when every candidate is flagged, the planner returns the
  "stay" plan (zero actions), counted as a fallback.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Guardrail:
    """Forbidden boxes ``[x0, y0, x1, y1]`` in state coordinates, checked on states decoded from embeddings.

    Args:
        boxes: the forbidden regions.
        margin: safety margin added around each box (covers the state head's error).
    """

    boxes: Sequence[Sequence[float]] = ()
    margin: float = 0.05

    def _boxes(self, device: torch.device, dtype: torch.dtype) -> Tensor:
        b = torch.as_tensor(self.boxes, dtype=dtype, device=device).reshape(-1, 4)
        return b + torch.tensor([-self.margin, -self.margin, self.margin, self.margin], dtype=dtype, device=device)

    def depth(self, states: Tensor) -> Tensor:
        """How deep each ``(..., 2)`` state lies inside the nearest inflated box (<= 0 outside): a soft penalty."""
        if not len(self.boxes):
            return torch.zeros(states.shape[:-1], dtype=states.dtype, device=states.device)
        b = self._boxes(states.device, states.dtype)  # (K, 4)
        x, y = states[..., None, 0], states[..., None, 1]
        inside = torch.stack([x - b[:, 0], b[:, 2] - x, y - b[:, 1], b[:, 3] - y], dim=-1).amin(dim=-1)  # (..., K)
        return inside.amax(dim=-1)

    def violates(self, states: Tensor) -> Tensor:
        """``(...)`` bool: the state lies in an inflated box."""
        return self.depth(states) > 0


@dataclass
class PlanningCost:
    """Cost of candidate plans from their predicted embeddings (see module docstring).

    Args:
        terminal_weight: weight of the goal energy of the last predicted state.
        step_weight: weight of the goal energy averaged over every predicted state.
        action_weight: weight of the mean squared action.
        guardrail: forbidden regions (``None``: no guardrail).
        guardrail_weight: the gradient planner's soft penalty per unit of depth into a box.
    """

    terminal_weight: float = 1.0
    step_weight: float = 0.0
    action_weight: float = 0.0
    guardrail: Guardrail | None = None
    guardrail_weight: float = 100.0

    def energy(self, z: Tensor, goal: Tensor) -> Tensor:
        """Goal energy ``(...)`` of embeddings ``(..., D)`` against goal embeddings broadcast to them."""
        return (z - goal).pow(2).mean(dim=-1)

    def __call__(self, z: Tensor, goal: Tensor, actions: Tensor) -> Tensor:
        """``(..., E, N)`` cost of ``N`` plans per episode from predictions ``(..., E, N, H, D)``, the goals ``(E, D)`` and
        actions ``(E, N, H, A)`` (leading dimensions, e.g. draws of a latent, are kept)."""
        energy = self.energy(z, goal[:, None, None, :])  # (..., E, N, H)
        cost = self.terminal_weight * energy[..., -1]
        if self.step_weight:
            cost = cost + self.step_weight * energy.mean(dim=-1)
        if self.action_weight:
            cost = cost + self.action_weight * actions.pow(2).mean(dim=(-2, -1))
        return cost
