"""What every point-navigation environment shares (two rooms, the maze): a disc agent in the unit square moved by
continuous 2-D actions, sliding along obstacles, rendered as an antialiased red disc on a background of walls.

Subclasses say where the obstacles are (:meth:`blocked`, :meth:`_draw_background`) and what a room is
(:meth:`room`). The true state, the room and the forbidden-region flag are in ``info`` only: a planner sees images.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from jepa_platform.errors import ConfigError

BACKGROUND = np.array([236, 232, 222], np.float32)
WALL = np.array([70, 70, 80], np.float32)
AGENT = np.array([220, 40, 40], np.float32)


class PointNavigationEnv(gym.Env):
    """Base of the point-navigation environments (see module docstring).

    Args:
        image_size: side of the RGB observation in pixels.
        speed: displacement per step for an action of norm 1 per axis.
        agent_radius: the agent's radius (collisions and drawing).
        forbidden: guardrail boxes ``[[x0, y0, x1, y1], ...]`` (not drawn, not blocking).
        render_mode: ``rgb_array`` (observations are rgb arrays in every mode).
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, image_size: int, speed: float, agent_radius: float, forbidden: Sequence[Sequence[float]], render_mode: str | None) -> None:
        if image_size < 8 or not 0 < speed < 0.5 or not 0 < agent_radius < 0.25:
            raise ConfigError("env: image_size >= 8, speed in (0, 0.5) and agent_radius in (0, 0.25) are required")
        self.image_size, self.speed, self.agent_radius = int(image_size), float(speed), float(agent_radius)
        self.forbidden = np.asarray(forbidden, np.float32).reshape(-1, 4)
        self.render_mode = render_mode
        self.action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.observation_space = spaces.Box(0, 255, (self.image_size, self.image_size, 3), np.uint8)
        self.state = np.array([0.25, 0.25], np.float32)

    # -- what subclasses define -------------------------------------------------------------------------------------
    def blocked(self, state: np.ndarray) -> bool:
        """Whether the agent (a disc) at ``state`` overlaps an obstacle or leaves the square."""
        raise NotImplementedError

    def room(self, state: np.ndarray) -> int:
        raise NotImplementedError

    def background(self) -> np.ndarray:
        """The ``(S, S, 3)`` float picture of everything but the agent, as it is now."""
        raise NotImplementedError

    # -- shared geometry --------------------------------------------------------------------------------------------
    def outside(self, state: np.ndarray) -> bool:
        r = self.agent_radius
        return bool(np.any(state < r - 1e-6) or np.any(state > 1 - r + 1e-6))

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
        raise ConfigError("env: no free position found: check the walls, doors and forbidden boxes")

    # -- gymnasium API ----------------------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        """Start at ``options["state"]`` if given (must be free), else at a random free position."""
        super().reset(seed=seed)
        self.reset_layout()
        if options and options.get("state") is not None:
            state = np.asarray(options["state"], np.float32)
            if self.blocked(state):
                raise ValueError(f"reset state {state.tolist()} is inside a wall or outside the square")
            self.state = state.copy()
        else:
            self.state = self.sample_free_state(self.np_random, margin=-1.0)
        return self.render_state(self.state), self._info()

    def reset_layout(self) -> None:
        """Hook for layouts that change within an episode (called by :meth:`reset` before placing the agent)."""

    def move(self, action: np.ndarray) -> None:
        """Move by ``action`` x ``speed``, sliding along obstacles: each axis moves alone, stopped by a bisection at
        the obstacle."""
        delta = np.clip(np.asarray(action, np.float32).reshape(2), -1, 1) * self.speed
        state = self.state.copy()
        for axis in (0, 1):
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

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        self.move(action)
        return self.render_state(self.state), 0.0, False, False, self._info()

    def render(self) -> np.ndarray:
        return self.render_state(self.state)

    def _info(self) -> dict[str, Any]:
        return {"state": self.state.copy(), "room": self.room(self.state), "in_forbidden": self.in_forbidden(self.state)}

    # -- drawing ----------------------------------------------------------------------------------------------------
    def _pixel_grid(self) -> tuple[np.ndarray, np.ndarray]:
        c = (np.arange(self.image_size, dtype=np.float32) + 0.5) / self.image_size
        return np.meshgrid(c, c, indexing="xy")

    def draw_boxes(self, boxes: np.ndarray) -> np.ndarray:
        """A background with the wall boxes ``(K, 4)`` drawn (pixels whose centre lies within half a pixel of one)."""
        xs, ys = self._pixel_grid()
        h = 0.5 / self.image_size
        image = np.broadcast_to(BACKGROUND, (self.image_size, self.image_size, 3)).copy()
        for x0, y0, x1, y1 in boxes:
            image[(xs > x0 - h) & (xs < x1 + h) & (ys > y0 - h) & (ys < y1 + h)] = WALL
        return image

    def render_state(self, state: np.ndarray) -> np.ndarray:
        """The observation of the agent at ``state`` (also how a goal image is made)."""
        xs, ys = self._pixel_grid()
        dist = np.hypot(xs - state[0], ys - state[1]) * self.image_size
        alpha = np.clip(self.agent_radius * self.image_size - dist + 0.5, 0, 1)[..., None]
        return (self.background() * (1 - alpha) + AGENT * alpha).round().astype(np.uint8)
