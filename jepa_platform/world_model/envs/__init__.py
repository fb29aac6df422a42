"""Environments with the gymnasium API; importing this package registers the built-ins (``jepa list``) and their
gymnasium ids (``gymnasium.make("jepa/TwoRooms-v0")``)."""

from __future__ import annotations

from typing import Any

import gymnasium as gym

from jepa_platform.errors import ConfigError
from jepa_platform.registry import ENVIRONMENTS
from jepa_platform.world_model.envs.two_rooms import TwoRoomsEnv

if "jepa/TwoRooms-v0" not in gym.registry:
    gym.register("jepa/TwoRooms-v0", entry_point="jepa_platform.world_model.envs.two_rooms:TwoRoomsEnv")


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


__all__ = ["TwoRoomsEnv", "make_env"]
