"""Environments with the gymnasium API; importing this package registers the built-ins (``jepa list``) and their
gymnasium ids (``gymnasium.make("jepa/TwoRooms-v0")``, ``"jepa/Maze-v0"``)."""

from __future__ import annotations

from typing import Any

import gymnasium as gym

from jepa_platform.errors import ConfigError
from jepa_platform.registry import ENVIRONMENTS
from jepa_platform.world_model.envs.maze import MazeEnv
from jepa_platform.world_model.envs.two_rooms import TwoRoomsEnv

for _id, _entry in (("jepa/TwoRooms-v0", "two_rooms:TwoRoomsEnv"), ("jepa/Maze-v0", "maze:MazeEnv")):
    if _id not in gym.registry:
        gym.register(_id, entry_point=f"jepa_platform.world_model.envs.{_entry}")


def make_env(name: str, **kwargs: Any) -> gym.Env:
    """A registered environment by name (``two_rooms``, plugins), or any gymnasium id with ``render_mode="rgb_array"``
    (frames come from ``render()``)."""
    if name in ENVIRONMENTS.names():
        return ENVIRONMENTS.get(name).cls(**kwargs)
    try:
        return gym.make(name, render_mode="rgb_array", **kwargs)
    except gym.error.Error as exc:
        raise ConfigError(
            f"unknown environment '{name}': use one of {', '.join(ENVIRONMENTS.names())} (jepa list) or a gymnasium id ({exc})"
        ) from exc
    except TypeError as exc:
        raise ConfigError(f"environment '{name}' does not take these parameters: {exc}") from exc


__all__ = ["MazeEnv", "TwoRoomsEnv", "make_env"]
