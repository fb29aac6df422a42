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
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from jepa_platform.errors import ConfigError
from jepa_platform.registry import register_environment

LAYOUTS = ("vertical", "horizontal")
BACKGROUND = np.array([236, 232, 222], np.float32)
WALL = np.array([70, 70, 80], np.float32)
AGENT = np.array([220, 40, 40], np.float32)


@register_environment("two_rooms")
class TwoRoomsEnv(gym.Env):
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

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": 10}

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
        self.image_size, self.layout = int(image_size), layout
        self.wall_position, self.wall_thickness = float(wall_position), float(wall_thickness)
        self.door_position, self.door_width = float(door_position), float(door_width)
        self.speed, self.agent_radius = float(speed), float(agent_radius)
        self.forbidden = np.asarray(forbidden, np.float32).reshape(-1, 4)
        self.render_mode = render_mode
        self.action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.observation_space = spaces.Box(0, 255, (self.image_size, self.image_size, 3), np.uint8)
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
        if np.any(state < r - 1e-6) or np.any(state > 1 - r + 1e-6):
            return True
        a, b = self._split_axis(), 1 - self._split_axis()
        across = abs(state[a] - self.wall_position) < self.wall_thickness / 2 + r
        in_door = abs(state[b] - self.door_position) < self.door_width / 2 - r
        return bool(across and not in_door)

    def free(self, state: np.ndarray) -> bool:
        return not self.blocked(np.asarray(state, np.float32))

    def in_forbidden(self, state: np.ndarray) -> bool:
        x, y = float(state[0]), float(state[1])
        return bool(any(x0 <= x <= x1 and y0 <= y <= y1 for x0, y0, x1, y1 in self.forbidden))

    def sample_free_state(self, rng: np.random.Generator, room: int | None = None, margin: float = 0.0) -> np.ndarray:
        """A uniformly drawn free position (in ``room`` if given), at least ``margin`` away from forbidden boxes."""
        for _ in range(10_000):
            s = rng.uniform(0, 1, 2).astype(np.float32)
            if self.blocked(s) or (room is not None and self.room(s) != room):
                continue
            if margin >= 0 and any(x0 - margin <= s[0] <= x1 + margin and y0 - margin <= s[1] <= y1 + margin for x0, y0, x1, y1 in self.forbidden):
                continue
            return s
        raise ConfigError("env: no free position found: check the wall, door and forbidden boxes")

    # -- gymnasium API ----------------------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        """Start at ``options["state"]`` if given (must be free), else at a random free position."""
        super().reset(seed=seed)
        if options and options.get("state") is not None:
            state = np.asarray(options["state"], np.float32)
            if self.blocked(state):
                raise ValueError(f"reset state {state.tolist()} is inside a wall or outside the square")
            self.state = state.copy()
        else:
            self.state = self.sample_free_state(self.np_random, margin=-1.0)
        return self.render_state(self.state), self._info()

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        delta = np.clip(np.asarray(action, np.float32).reshape(2), -1, 1) * self.speed
        state = self.state.copy()
        for axis in (0, 1):  # slide along obstacles: each axis moves alone, stopped by a bisection at the obstacle
            moved = state.copy()
            moved[axis] += delta[axis]
            if self.blocked(moved):
                lo, hi = 0.0, 1.0
                for _ in range(12):
                    mid = (lo + hi) / 2
                    probe = state.copy()
                    probe[axis] += delta[axis] * mid
                    lo, hi = (mid, hi) if not self.blocked(probe) else (lo, mid)
                moved = state.copy()
                moved[axis] += delta[axis] * lo
            state = moved
        self.state = state
        return self.render_state(state), 0.0, False, False, self._info()

    def render(self) -> np.ndarray:
        return self.render_state(self.state)

    def _info(self) -> dict[str, Any]:
        return {"state": self.state.copy(), "room": self.room(self.state), "in_forbidden": self.in_forbidden(self.state)}

    # -- drawing ----------------------------------------------------------------------------------------------------
    def _pixel_grid(self) -> tuple[np.ndarray, np.ndarray]:
        c = (np.arange(self.image_size, dtype=np.float32) + 0.5) / self.image_size
        return np.meshgrid(c, c, indexing="xy")

    def _draw_background(self) -> np.ndarray:
        xs, ys = self._pixel_grid()
        along, across = (ys, xs) if self.layout == "vertical" else (xs, ys)
        half_px = 0.5 / self.image_size
        wall = (np.abs(across - self.wall_position) < self.wall_thickness / 2 + half_px) & (np.abs(along - self.door_position) >= self.door_width / 2)
        image = np.broadcast_to(BACKGROUND, (self.image_size, self.image_size, 3)).copy()
        image[wall] = WALL
        return image

    def render_state(self, state: np.ndarray) -> np.ndarray:
        """The observation of the agent at ``state`` (also how a goal image is made)."""
        xs, ys = self._pixel_grid()
        dist = np.hypot(xs - state[0], ys - state[1]) * self.image_size
        alpha = np.clip(self.agent_radius * self.image_size - dist + 0.5, 0, 1)[..., None]
        return (self._background * (1 - alpha) + AGENT * alpha).round().astype(np.uint8)

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
