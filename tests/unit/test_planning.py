"""Environments, planners, costs and the MPC loop, with an oracle world model (no learning involved)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from support.oracles import OracleWorldModel

from jepa_platform.registry import ENVIRONMENTS, PLANNERS
from jepa_platform.world_model.costs import Guardrail, PlanningCost
from jepa_platform.world_model.envs import TwoRoomsEnv, make_env
from jepa_platform.world_model.mpc import run_episode
from jepa_platform.world_model.planners import WorldModel, colored_noise

MODEL_PLANNERS = [n for n in PLANNERS.names() if PLANNERS.get(n).cls.uses_model and n != "greedy"]


def oracle(env: TwoRoomsEnv) -> WorldModel:
    return WorldModel(OracleWorldModel(env.speed), lambda f: f.float() / 255, env.action_space.low, env.action_space.high)


# -- environments ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ENVIRONMENTS.names())
def test_environment_contract(name: str):
    """Every registered environment: gymnasium API, RGB frames, the true state in info only, and what jepa plan uses."""
    env = make_env(name)
    obs, info = env.reset(seed=0)
    assert obs.dtype == np.uint8 and obs.ndim == 3 and obs.shape[-1] == 3 and env.observation_space.contains(obs)
    assert "state" in info
    for _ in range(5):
        obs, _reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert env.observation_space.contains(obs) and isinstance(terminated, bool) and isinstance(truncated, bool)
    rng = np.random.default_rng(0)
    state = env.sample_free_state(rng)
    assert np.array_equal(env.render_state(state), env.reset(options={"state": state})[0])


def test_two_rooms_wall_blocks_and_door_passes():
    env = TwoRoomsEnv()
    env.reset(options={"state": [0.2, 0.15]})
    for _ in range(20):
        _, _, _, _, info = env.step(np.array([1.0, 0.0]))
    assert info["room"] == 0 and info["state"][0] < env.wall_position  # stopped by the wall, slid nowhere
    env.reset(options={"state": [0.2, 0.5]})  # level with the door
    for _ in range(20):
        _, _, _, _, info = env.step(np.array([1.0, 0.0]))
    assert info["room"] == 1 and info["state"][0] > env.wall_position


def test_two_rooms_parameters_change_the_layout_and_bad_ones_are_errors():
    closed = TwoRoomsEnv(door_width=0.0, layout="horizontal")
    closed.reset(options={"state": [0.5, 0.2]})
    for _ in range(30):
        _, _, _, _, info = closed.step(np.array([0.0, 1.0]))
    assert info["room"] == 0
    from jepa_platform.errors import ConfigError

    with pytest.raises(ConfigError, match="layout"):
        TwoRoomsEnv(layout="diagonal")
    with pytest.raises(ConfigError, match="jump the wall"):
        TwoRoomsEnv(speed=0.2)


def test_gymnasium_id_and_observation_size():
    import gymnasium as gym

    env = gym.make("jepa/TwoRooms-v0", image_size=32)
    assert env.reset(seed=1)[0].shape == (32, 32, 3)


# -- costs and noise ---------------------------------------------------------------------------------------------------
def test_guardrail_depth_and_violation():
    guard = Guardrail([[0.4, 0.4, 0.6, 0.6]], margin=0.05)
    states = torch.tensor([[0.5, 0.5], [0.37, 0.5], [0.3, 0.5], [0.9, 0.9]])
    assert guard.violates(states).tolist() == [True, True, False, False]
    assert guard.depth(states)[0] == pytest.approx(0.15)


def test_colored_noise_is_smoother_than_white():
    g = torch.Generator().manual_seed(0)
    smooth, white = colored_noise((256, 32, 2), 2.0, g, torch.device("cpu")), colored_noise((256, 32, 2), 0.0, g, torch.device("cpu"))
    assert smooth.std().item() == pytest.approx(1.0, abs=0.1)
    roughness = lambda x: (x[:, 1:] - x[:, :-1]).pow(2).mean()  # noqa: E731
    assert roughness(smooth) < 0.3 * roughness(white)


# -- planners ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", PLANNERS.names())
def test_planner_contract(name: str):
    """Every registered planner: a (horizon, A) plan within the bounds from observations and a goal image."""
    env = TwoRoomsEnv()
    wm = oracle(env)
    planner = PLANNERS.get(name).cls(seed=0)
    obs, _ = env.reset(options={"state": [0.2, 0.2]})
    actions = planner.plan(wm, obs, env.render_state(np.array([0.3, 0.3], np.float32)), PlanningCost(), 8)
    assert actions.shape == (8, 2) and torch.isfinite(actions).all()
    assert (actions >= -1).all() and (actions <= 1).all()
    planner.shift(2)


@pytest.mark.parametrize("name", MODEL_PLANNERS)
def test_model_planners_reach_goals_and_respect_guardrails(name: str):
    """With a perfect model, every model-based planner reaches same-room goals around a forbidden box that lies on
    the straight line, never entering it (counted in the simulator)."""
    env = TwoRoomsEnv(forbidden=[[0.2, 0.4, 0.3, 0.6]])
    wm = oracle(env)
    cost = PlanningCost(guardrail=Guardrail(env.forbidden.tolist(), margin=0.05))
    planner = PLANNERS.get(name).cls(seed=0)
    results = [
        run_episode(env, planner, wm, cost, np.array(s, np.float32), np.array(g, np.float32), 12, 3, 60, 0.06)
        for s, g in [
            ([0.25, 0.15], [0.25, 0.85]),
            ([0.1, 0.9], [0.4, 0.1]),
        ]
    ]
    assert all(r.success for r in results), [(r.steps, r.states[-1]) for r in results]
    assert sum(r.violations for r in results) == 0
    assert all(r.evaluations > 0 and r.planning_seconds > 0 for r in results)


def test_without_guardrail_the_straight_path_enters_the_box():
    """The control for the test above: the same episode without the guardrail does violate."""
    env = TwoRoomsEnv(forbidden=[[0.2, 0.4, 0.3, 0.6]])
    planner = PLANNERS.get("cem").cls(seed=0)
    r = run_episode(
        env, planner, oracle(env), PlanningCost(), np.array([0.25, 0.15], np.float32), np.array([0.25, 0.85], np.float32), 12, 3, 60, 0.06
    )
    assert r.success and r.violations > 0


def test_every_candidate_violating_falls_back_to_staying():
    """A model that predicts a drift into the box faster than any action can resist: no safe candidate, so the
    planner returns the stay plan and counts a fallback."""
    env = TwoRoomsEnv()
    wm = oracle(env)
    rollout = wm.rollout
    wm.rollout = lambda z0, actions: rollout(z0, actions) + 0.1 * torch.arange(1, actions.shape[1] + 1)[None, :, None] * torch.tensor([1.0, 0.0])
    cost = PlanningCost(guardrail=Guardrail([[0.25, 0.0, 1.0, 1.0]], margin=0.0))  # the agent stands at x = 0.2
    planner = PLANNERS.get("mppi").cls(seed=0)
    obs, _ = env.reset(options={"state": [0.2, 0.2]})
    actions = planner.plan(wm, obs, env.render_state(np.array([0.3, 0.3], np.float32)), cost, 6)
    assert torch.count_nonzero(actions) == 0 and planner.fallbacks == 1


def test_goal_embedding_is_computed_once_per_goal():
    env = TwoRoomsEnv()
    wm = oracle(env)
    goal = env.render_state(np.array([0.3, 0.3], np.float32))
    first = wm.encode_goal(goal)
    assert wm.encode_goal(goal) is first
