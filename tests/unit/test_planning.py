"""Environments, planners, costs and the MPC loop, with an oracle world model (no learning involved)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from support.oracles import OracleWorldModel

from jepa_platform.registry import ENVIRONMENTS, PLANNERS
from jepa_platform.world_model.costs import Guardrail, PlanningCost
from jepa_platform.world_model.envs import TwoRoomsEnv, make_env
from jepa_platform.world_model.mpc import run_episode, run_episodes
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
def _embed(wm: WorldModel, env: TwoRoomsEnv, *positions: list[float]) -> torch.Tensor:
    """Embeddings ``(E, D)`` of the frames of ``positions``."""
    return wm.encode(np.stack([env.render_state(np.array(p, np.float32)) for p in positions]))


@pytest.mark.parametrize("name", PLANNERS.names())
def test_planner_contract(name: str):
    """Every registered planner: a batch of plans ``(E, horizon, A)`` within the bounds from embeddings of
    observations and goals, per-episode state that shifts and follows the episodes kept, no host sync inside its
    search, and plans that do not depend on the batch: each episode's plan is the one it gets alone."""
    from jepa_platform.testing.host_syncs import SyncCountingMode

    env = TwoRoomsEnv()
    wm = oracle(env)
    planner = PLANNERS.get(name).cls(seed=0)
    z0, goals = _embed(wm, env, [0.2, 0.2], [0.7, 0.3], [0.4, 0.8]), _embed(wm, env, [0.3, 0.3], [0.6, 0.6], [0.2, 0.9])
    with SyncCountingMode() as counter:
        actions = planner.plan(wm, z0, goals, PlanningCost(), 8)
    assert actions.shape == (3, 8, 2) and torch.isfinite(actions).all()
    assert (actions >= -1).all() and (actions <= 1).all()
    assert not counter.counts, f"host syncs inside {name}'s search: {dict(counter.counts)}"
    planner.shift(2)
    planner.select(torch.tensor([0, 2]))
    assert all(getattr(planner, s) is None or getattr(planner, s).shape[0] == 2 for s in planner.episode_state)
    planner.plan(wm, z0[[0, 2]], goals[[0, 2]], PlanningCost(), 8)
    for e in range(3):
        planner.reset()
        alone = planner.plan(wm, z0[e : e + 1], goals[e : e + 1], PlanningCost(), 8)
        assert torch.allclose(alone[0], actions[e], atol=1e-5), f"{name}: episode {e} planned differently in a batch"


@pytest.mark.parametrize("name", MODEL_PLANNERS)
def test_model_planners_reach_goals_and_respect_guardrails(name: str):
    """With a perfect model, every model-based planner reaches same-room goals around a forbidden box that lies on
    the straight line, never entering it (counted in the simulator), the episodes planned as one batch."""
    env = TwoRoomsEnv(forbidden=[[0.2, 0.4, 0.3, 0.6]])
    wm = oracle(env)
    cost = PlanningCost(guardrail=Guardrail(env.forbidden.tolist(), margin=0.05))
    planner = PLANNERS.get(name).cls(seed=0)
    pairs = [(np.array(s, np.float32), np.array(g, np.float32)) for s, g in [([0.25, 0.15], [0.25, 0.85]), ([0.1, 0.9], [0.4, 0.1])]]
    results = run_episodes([env, TwoRoomsEnv(forbidden=env.forbidden.tolist())], planner, wm, cost, pairs, 12, 3, 60, 0.06)
    assert all(r.success for r in results), [(r.steps, r.states[-1]) for r in results]
    assert sum(r.violations for r in results) == 0
    assert all(r.evaluations > 0 and r.planning_seconds > 0 for r in results)


def test_a_batch_of_episodes_gives_what_each_gives_alone():
    """The batched MPC loop: episodes that end at different steps leave the batch, and every episode's trajectory is
    the one it has when run on its own (the results of jepa plan do not depend on --batch)."""
    pairs = [
        (np.array(s, np.float32), np.array(g, np.float32))
        for s, g in [([0.2, 0.2], [0.3, 0.25]), ([0.1, 0.9], [0.85, 0.2]), ([0.5, 0.5], [0.5, 0.52]), ([0.8, 0.8], [0.2, 0.7])]
    ]
    for name in ("icem", "gradient", "random"):
        env = TwoRoomsEnv()
        wm = oracle(env)
        planner = PLANNERS.get(name).cls(seed=0)
        together = run_episodes([TwoRoomsEnv() for _ in pairs], planner, wm, PlanningCost(), pairs, 12, 3, 40, 0.06)
        alone = [run_episode(env, planner, wm, PlanningCost(), s, g, 12, 3, 40, 0.06) for s, g in pairs]
        assert len({e.steps for e in together}) > 1  # episodes left the batch at different replans
        assert together[2].success and together[2].replans == 0  # started at its goal: never planned
        for a, b in zip(together, alone, strict=True):
            assert (a.success, a.steps, a.replans, a.evaluations) == (b.success, b.steps, b.replans, b.evaluations), name
            assert np.allclose(a.states, b.states, atol=1e-4), name


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
    planner returns the stay plan and flags a fallback, for that episode only."""
    env = TwoRoomsEnv()
    wm = oracle(env)
    rollout = wm.rollout
    drift = torch.tensor([1.0, 0.0])
    wm.rollout = lambda z0, actions: (
        rollout(z0, actions) + 0.1 * torch.arange(1, actions.shape[2] + 1)[:, None] * drift * (z0[:, 0] < 0.5)[:, None, None, None]
    )
    cost = PlanningCost(guardrail=Guardrail([[0.25, 0.0, 1.0, 1.0]], margin=0.0))  # the first agent stands at x = 0.2
    for name in ("cem", "icem", "mppi", "gradient", "greedy"):
        planner = PLANNERS.get(name).cls(seed=0)
        z0, goals = _embed(wm, env, [0.2, 0.2], [0.2, 0.6]), _embed(wm, env, [0.2, 0.3], [0.2, 0.7])
        z0[1, 0] = 0.6  # the second episode stands in the box already, where no drift is predicted: it can plan
        actions = planner.plan(wm, z0, goals, cost, 6)
        assert torch.count_nonzero(actions[0]) == 0 and planner.fallen_back.tolist() == [True, False], name
        assert torch.count_nonzero(actions[1]) > 0, name


@pytest.mark.slow
def test_compiled_rollout_pads_rows_and_matches_eager():
    """jepa plan --compile: the rollout through torch.compile, rows padded to a power of two, gives the eager one."""
    env = TwoRoomsEnv()
    eager = oracle(env)
    compiled = WorldModel(OracleWorldModel(env.speed), lambda f: f.float() / 255, env.action_space.low, env.action_space.high, compile=True)
    z0 = _embed(eager, env, [0.2, 0.2], [0.7, 0.3], [0.4, 0.8])
    for n in (5, 300):
        actions = torch.rand(3, n, 6, 2) * 2 - 1
        assert torch.allclose(compiled.rollout(z0, actions), eager.rollout(z0, actions), atol=1e-6)
    assert compiled.evaluations == eager.evaluations == 3 * 305 * 6
