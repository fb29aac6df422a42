"""Two-rooms navigation: a point agent in a square split by a wall with one door (PLDM's and eb_jepa's testbed).

Coordinates are in ``[0, 1]^2`` (x to the right, y downwards, as in the image). The wall is vertical at
``wall_position`` (``layout="vertical"``: rooms left and right) or horizontal (rooms top and bottom), ``wall_thickness``
thick, with a door of ``door_width`` centred at ``door_position`` along the wall. Actions are continuous 2-D
``[-1, 1]^2`` displacements scaled by ``speed``; the agent slides along walls (each axis moves on its own and stops at
an obstacle). Observations are RGB renderings (``image_size`` pixels square, antialiased so that sub-pixel moves show).

What a planner must not see: the true state ``info["state"]`` (x, y), the room index ``info["room"]`` and whether the
agent stands in a ``forbidden`` box (``info["in_forbidden"]``) are in ``info`` only, for collection and evaluation.
The forbidden boxes (guardrail regions, ``[x0, y0, x1, y1]``) are not drawn and do not block: they are what a
guardrail must keep a plan out of, measured in the simulator after the fact.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from jepa_platform.errors import ConfigError
from jepa_platform.registry import register_environment
from jepa_platform.world_model.envs.navigation import BACKGROUND, WALL, PointNavigationEnv

LAYOUTS = ("vertical", "horizontal")


@register_environment("two_rooms")
class TwoRoomsEnv(PointNavigationEnv):
    """Point agent, two rooms joined by a door (see module docstring).

    Args:
        image_size: side of the RGB observation in pixels.
        layout: ``vertical`` (rooms left/right) or ``horizontal`` (rooms top/bottom).
        wall_position: the wall's centre along the axis it splits (0..1).
        wall_thickness: the wall's thickness.
        door_position: the door's centre along the wall (0..1).
        door_width: the door's width (0 closes it).
        speed: displacement per step for an action of norm 1 per axis.
        agent_radius: the agent's radius (collisions and drawing).
        forbidden: guardrail boxes ``[[x0, y0, x1, y1], ...]`` (not drawn, not blocking).
        render_mode: ``rgb_array`` (observations are rgb arrays in every mode).
    """

    def __init__(
        self,
        image_size: int = 64,
        layout: str = "vertical",
        wall_position: float = 0.5,
        wall_thickness: float = 0.06,
        door_position: float = 0.5,
        door_width: float = 0.2,
        speed: float = 0.05,
        agent_radius: float = 0.035,
        forbidden: Sequence[Sequence[float]] = ((0.62, 0.12, 0.82, 0.32),),
        render_mode: str | None = "rgb_array",
    ) -> None:
        if layout not in LAYOUTS:
            raise ConfigError(f"env layout={layout!r} is not one of {', '.join(LAYOUTS)}")
        if not (0 < wall_position < 1 and 0 <= door_width < 1 and 0 < speed < 0.5 and image_size >= 8):
            raise ConfigError("env: wall_position in (0, 1), door_width in [0, 1), speed in (0, 0.5) and image_size >= 8 are required")
        if speed >= wall_thickness + 2 * agent_radius:
            raise ConfigError(f"env speed={speed} must be below wall_thickness + 2 x agent_radius, or the agent could jump the wall")
        super().__init__(image_size, speed, agent_radius, forbidden, render_mode)
        self.layout = layout
        self.wall_position, self.wall_thickness = float(wall_position), float(wall_thickness)
        self.door_position, self.door_width = float(door_position), float(door_width)
        self.state = np.array([0.25, 0.5], np.float32)
        self._background = self._draw_background()

    # -- geometry ---------------------------------------------------------------------------------------------------
    def _split_axis(self) -> int:
        """The coordinate the wall splits (0 = x for a vertical wall)."""
        return 0 if self.layout == "vertical" else 1

    def room(self, state: np.ndarray) -> int:
        """0 for the room before the wall (left or top), 1 after it."""
        return int(state[..., self._split_axis()] > self.wall_position)

    def blocked(self, state: np.ndarray) -> bool:
        """Whether the agent (a disc) at ``state`` overlaps the wall or leaves the square."""
        r = self.agent_radius
        if self.outside(state):
            return True
        a, b = self._split_axis(), 1 - self._split_axis()
        across = abs(state[a] - self.wall_position) < self.wall_thickness / 2 + r
        in_door = abs(state[b] - self.door_position) < self.door_width / 2 - r
        return bool(across and not in_door)

    # -- drawing ----------------------------------------------------------------------------------------------------
    def _draw_background(self) -> np.ndarray:
        xs, ys = self._pixel_grid()
        along, across = (ys, xs) if self.layout == "vertical" else (xs, ys)
        half_px = 0.5 / self.image_size
        wall = (np.abs(across - self.wall_position) < self.wall_thickness / 2 + half_px) & (np.abs(along - self.door_position) >= self.door_width / 2)
        image = np.broadcast_to(BACKGROUND, (self.image_size, self.image_size, 3)).copy()
        image[wall] = WALL
        return image

    def background(self) -> np.ndarray:
        return self._background

    def rooms_apart(self, a: np.ndarray, b: np.ndarray) -> int:
        """Doors between the rooms of ``a`` and ``b`` on the shortest way (0 or 1 here)."""
        return int(self.room(a) != self.room(b))

    def describe(self) -> dict[str, Any]:
        """Geometry for drawing trajectories (rooms, wall, door, forbidden boxes)."""
        return {
            "layout": self.layout,
            "wall_position": self.wall_position,
            "wall_thickness": self.wall_thickness,
            "door_position": self.door_position,
            "door_width": self.door_width,
            "forbidden": self.forbidden.tolist(),
        }
